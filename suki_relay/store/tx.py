"""SQL written once for both backends: a transaction's cursor, and what a backend supplies.

A backend (sqlite.py, postgres.py) supplies connections and its few dialect differences
(placeholder, binary type, how claimers and schema upgrades are serialised); everything
the relay does with its tables is written against Tx with ``?`` placeholders.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

T = TypeVar("T")
ROWS_PER_INSERT = 500  # within both backends' limits on parameters per statement


def chunks(values: Sequence[T]) -> Iterator[list[T]]:
    """``values`` in lists of at most ROWS_PER_INSERT: for ``IN (...)`` and multi-row
    statements, within both backends' limits on parameters per statement."""
    for i in range(0, len(values), ROWS_PER_INSERT):
        yield list(values[i:i + ROWS_PER_INSERT])


def marks(values: Sequence[Any]) -> str:
    """``?, ?, ?``: one placeholder per value, for IN (...)."""
    return ", ".join("?" * len(values))


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """``sql`` with its ``?`` placeholders as ``$1, $2, ...``: PostgreSQL's own, which
    psycopg's RawCursor sends as they are. (Its usual ``%s`` placeholders are found by
    parsing the query in Python, cached only for queries of at most 50 parameters: every
    multi-row INSERT of four events or more was parsed again, half of the relay's CPU for
    the statement.)"""
    parts = sql.split("?")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)) + parts[-1]


class Tx:
    """A cursor in one transaction; SQL is written with ``?`` placeholders, and
    ``placeholder`` says how the cursor takes them: ``?`` as they are (SQLite), ``$n``
    numbered (PostgreSQL, a RawCursor)."""

    def __init__(self, cursor: Any, placeholder: str):
        self.cursor = cursor
        self.placeholder = placeholder

    def exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.placeholder != "?":
            sql = numbered(sql)
        self.cursor.execute(sql, params)
        return self.cursor

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            if self.placeholder != "?":
                sql = numbered(sql)
            self.cursor.executemany(sql, rows)

    def insert(self, head: str, row: str, rows: list[Sequence[Any]], tail: str = "") -> int:
        """``rows`` in multi-row INSERTs (``head`` + ``row``, ``row``, ... + ``tail``) of at
        most ROWS_PER_INSERT rows each; returns how many rows were inserted."""
        inserted = 0
        for chunk in chunks(rows):
            inserted += self.exec(head + ", ".join([row] * len(chunk)) + tail,
                                  [value for r in chunk for value in r]).rowcount
        return inserted

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.exec(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self.all(sql, params)
        return rows[0] if rows else None

    def tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows as tuples, in the order the query names its columns."""
        return [tuple(row) for row in self.exec(sql, params).fetchall()]


class Backend(ABC):
    """The part of a SQL store that differs between databases."""

    url: str

    placeholder = "?"
    blob_type = "BLOB"
    skip_locked = ""
    # the database's own clock, in seconds since the epoch (one clock for every node)
    now_sql = "((julianday('now') - 2440587.5) * 86400.0)"
    # the driver's errors that mean the database failed, not the statement (re-raised as
    # StoreUnavailable by tx()); any other error inside a transaction is the statement's
    unavailable: tuple[type[Exception], ...] = ()
    # how long a group commit's leader waits for more requests while they come together
    # (group_commit.py): 0 where batches gather by themselves (behind SQLite's write lock)
    gather_seconds = 0.0
    # a group commit's batches under way at once in a process: 1 where one writer at a
    # time commits (SQLite's write lock); more where a batch spends its time waiting for
    # the database server, so the next batch commits meanwhile
    batches_at_once = 1

    @abstractmethod
    def tx(self, write: bool = True, durable: bool = True) -> AbstractContextManager[Tx]:
        """A transaction. ``durable=False``: its commit need not reach the disk before it
        returns (a crash of the machine may undo it, a crash of the process cannot); for
        claims and lease renewals, which are re-derived from leases if lost."""

    def exclusive(self) -> AbstractContextManager[None]:
        """Held by group commit around gathering and committing a batch (may be a no-op)."""
        return nullcontext()

    def bounded(self, seconds: float) -> AbstractContextManager[None]:
        """Transactions this thread begins inside take at most ``seconds`` once they have a
        connection, or raise StoreUnavailable (where the backend can cut one off: a no-op
        here)."""
        return nullcontext()

    @abstractmethod
    def close(self) -> None:
        """Close every connection this process opened (not those of a parent process)."""

    def lock_claims(self, tx: Tx) -> None:  # noqa: B027 (a no-op where one process writes)
        """Serialise claimers, so per-action concurrency limits hold across processes."""

    def lock_schema(self, tx: Tx) -> None:  # noqa: B027 (idem)
        """Serialise schema creation and upgrades between nodes starting together."""

