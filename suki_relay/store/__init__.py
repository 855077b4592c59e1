"""Keeping: the ledger (one protocol per consumer, two backends chosen by the `store:`
URL), the local spool, and pruning.

    base.py       what goes in and out of the ledger (NewEvent, Claimed, ...), and the
                  protocol of each consumer: Receiving, Delivering, Administering,
                  Recovering (Store is all four; a consumer takes only its own)
    rows.py       what the admin reads return (EventRow, DeliveryRow, AttemptRow, Stats)
    tx.py         a transaction's cursor (SQL with ``?``), and what a backend supplies
    schema.py     the tables, as numbered migrations; upgrading a database in place
    ledger.py     the request and delivery paths: record, claim, extend, finish, release
    admin.py      inspection and repair: events, event, deliveries, reopen, reroute, prune, stats
    sql.py        the store assembled from those; sqlite.py and postgres.py are its backends
    group_commit.py  many concurrent callers, one transaction
    sessions.py   the ledger's part for recovery (sessions seen, waiting, recovered)
    refusals.py   the ledger's part for refused requests
    audit.py      the console's audit trail
    health.py     the ledger's part for sick targets: failures in a row, pause, probe, resume
    spool.py      the local spool (a SQLite database of its own): where a notification is
                  committed when the store cannot
    retention.py  pruning old events, never inside the replay window
    pgpool.py     PostgreSQL connections

Adding a migration (a column, a table, an index): append
``Migration(<last version + 1>, "why", "ALTER TABLE ... ;")`` to ``schema.MIGRATIONS``;
never edit a step that has shipped. SQL must run on both SQLite and PostgreSQL (``{blob}``
is the binary type); ``ALTER TABLE t ADD COLUMN c TYPE`` does, with a default or NULL.
Every store opened upgrades itself in one transaction under the schema lock; a database
newer than the code raises SchemaTooNew. Then name the new column in the query that
reads it (admin reads name their columns) and add a field to the row in rows.py;
test_store_schema.py upgrades a version-1 database, so an upgrade is tested as it lands.
"""

from __future__ import annotations

from pathlib import Path

from suki_relay.errors import RelayError, SchemaTooNew, StoreUnavailable
from suki_relay.store.base import (
    DONE,
    FAILED,
    IN_FLIGHT,
    PENDING,
    UNKNOWN,
    Administering,
    Claimed,
    ClaimRequest,
    Delivering,
    EventFilter,
    NewEvent,
    Outcome,
    Receiving,
    Recorded,
    Recovering,
    Store,
)
from suki_relay.store.rows import (
    AttemptRow,
    ConfigVersionRow,
    DeliveryDetail,
    DeliveryListRow,
    DeliveryRow,
    EventDetail,
    EventRow,
    Stats,
)

__all__ = [
    "DONE",
    "FAILED",
    "IN_FLIGHT",
    "PENDING",
    "UNKNOWN",
    "Administering",
    "AttemptRow",
    "ClaimRequest",
    "Claimed",
    "ConfigVersionRow",
    "Delivering",
    "DeliveryDetail",
    "DeliveryListRow",
    "DeliveryRow",
    "EventDetail",
    "EventFilter",
    "EventRow",
    "NewEvent",
    "Outcome",
    "Receiving",
    "Recorded",
    "Recovering",
    "SchemaTooNew",
    "Stats",
    "Store",
    "StoreUnavailable",
    "open_store",
    "sqlite_path",
    "url_problem",
]


def url_problem(url: str) -> str | None:
    """What is wrong with a store URL, or None: the one rule for `check` and open_store()."""
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return None
    if url.startswith(("postgresql://", "postgres://")):
        from suki_relay.store.postgres import query_problem

        return query_problem(url)
    return "expected sqlite:///relative/path, sqlite:////absolute/path or postgresql://..."


def sqlite_path(url: str, base_dir: Path | None = None) -> Path | None:
    """The file of a sqlite:/// URL (a relative path is relative to base_dir); None for
    any other URL."""
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url.removeprefix("sqlite:///"))
    return path if path.is_absolute() else (base_dir or Path.cwd()) / path


def open_store(url: str, base_dir: Path | None = None, lazy: bool = False) -> Store:
    """sqlite:///relative/path (relative to base_dir), sqlite:////abs/path, postgresql://...

    ``lazy``: a store that cannot be reached or opened now opens anyway, and each
    transaction raises StoreUnavailable until it can (see PostgresStore, SqliteStore).
    Raises RelayError for a URL that url_problem() refuses, StoreUnavailable when the
    store cannot be reached, SchemaTooNew for a schema newer than this relay."""
    problem = url_problem(url)
    if problem is not None:
        raise RelayError(f"store: {problem}")
    path = sqlite_path(url, base_dir)
    if path is not None:
        from suki_relay.store.sqlite import SqliteStore

        return SqliteStore(path, lazy=lazy)
    if url.startswith(("postgresql:", "postgres:")):
        from suki_relay.store.postgres import PostgresStore

        return PostgresStore(url, lazy=lazy)
    raise AssertionError(url)  # url_problem() refused everything else
