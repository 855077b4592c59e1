"""The local spool: where a verified notification is committed when the store cannot.

With a PostgreSQL store, a database outage (restart, failover, network blip) would be
answered 503, and Suki never retries: every 503 is a note lost. So each node keeps a spool,
an SQLite file of its own (WAL, ``synchronous=FULL``, owner-only, next to actions.yaml by
default). When recording in the store raises StoreUnavailable, the event, already routed,
is committed there instead and answered 200 ``{"spooled": true}``; drain.py moves it into
the store, oldest first, once the database answers again.

An event is spooled exactly as it would have been recorded (same id, dedup key, receipt
time and plan: routing uses the config in force at receipt, as for any event), so moving it
is one ``store.record`` and a repeat of that (after a crash mid-drain, or of a request that
reached the store another way) finds the dedup key and plans nothing again.

A record that cannot be read back (its routing plan spoiled on disk) is set aside: moved to
the ``set_aside`` table of the same file, logged once, counted by the
``suki_relay_spool_set_aside`` gauge and listed by `suki-relay spool`, its raw body kept
(`suki-relay show ID --payload`); the rest drain past it.

The SQLite store needs no spool: it is already a local file, and when it cannot commit,
neither could a second file on the same disk.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suki_relay import logs, metrics
from suki_relay.printable import printable
from suki_relay.store import NewEvent, Recorded, StoreUnavailable
from suki_relay.store.group_commit import GroupCommit
from suki_relay.store.sqlite import SqliteDatabase

if TYPE_CHECKING:
    from suki_relay.config.load import Config

log = logging.getLogger("suki_relay.store.spool")

SCHEMA = """
CREATE TABLE IF NOT EXISTS spooled (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    dedup_key TEXT NOT NULL UNIQUE,
    received_at REAL NOT NULL,
    status TEXT,
    session_id TEXT,
    encounter_id TEXT,
    event TEXT NOT NULL,
    body BLOB NOT NULL,
    held_until REAL NOT NULL DEFAULT 0,
    drain_error TEXT
);
CREATE TABLE IF NOT EXISTS set_aside (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    dedup_key TEXT,
    received_at REAL,
    status TEXT,
    session_id TEXT,
    encounter_id TEXT,
    event TEXT,
    body BLOB,
    held_until REAL NOT NULL DEFAULT 0,
    drain_error TEXT,
    set_aside_at REAL NOT NULL
)
"""
# one row, rewritten by ping(): a write that needs the disk, as spooling an event does
PROBE = "CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL)"
LISTED = "seq, id, received_at, status, session_id, encounter_id, event, held_until, drain_error"
COLUMNS = "seq, id, dedup_key, received_at, status, session_id, encounter_id, event, body"


class SpoolFull(StoreUnavailable):
    """The store cannot commit and the spool holds max_events already."""


class Spool:
    """The spool file: a SQLite database (sqlite.SqliteDatabase: owner-only file, WAL,
    every commit fsynced, a connection per thread, a cross-process write lock), as the
    SQLite store has one, with tables of its own."""

    def __init__(self, path: Path, max_events: int):
        """Opened at first use, whatever the file says (lazy): a spool that cannot be
        opened raises StoreUnavailable at each use, saying why, until it can."""
        self.max_events = max_events
        # anything in the file, as far as this process knows: set when it spools, refreshed
        # by its drainer at every look; while true, the receiver looks a request's dedup key
        # up here first, so a request spooled and sent again keeps its first event id
        # (unknown until the drainer's first look: the receiver looks it up meanwhile)
        self.maybe_waiting = True
        self.path = path
        self.db = SqliteDatabase(path, self.ensure_schema, lazy=True)
        self.tx = self.db.tx
        self.exclusive = self.db.exclusive
        self.close = self.db.close

    def ensure_schema(self) -> None:
        with self.tx() as tx:
            for statement in SCHEMA.split(";"):
                tx.exec(statement)
            tx.exec(PROBE)

    # ------------------------------------------------------------ the request path

    def add(self, events: list[NewEvent]) -> list[Recorded | None]:
        """Commit events (one fsynced transaction); None for each one there was no room for.
        A dedup key already spooled is a duplicate of that event, as in the store."""
        results: list[Recorded | None] = []
        with self.tx() as tx:
            row = tx.one("SELECT count(*) AS n FROM spooled")
            room = self.max_events - (row["n"] if row else 0)
            for ev in events:
                first = tx.one("SELECT id FROM spooled WHERE dedup_key = ?", (ev.dedup_key,))
                if first is not None:
                    results.append(Recorded(first["id"], True))
                elif room <= 0:
                    results.append(None)
                else:
                    room -= 1
                    fields = {k: v for k, v in dataclasses.asdict(ev).items() if k != "body"}
                    tx.exec("INSERT INTO spooled (id, dedup_key, received_at, status, session_id, "
                            "encounter_id, event, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (ev.id, ev.dedup_key, ev.received_at, ev.status, ev.session_id,
                             ev.encounter_id, json.dumps(fields), ev.body))
                    results.append(Recorded(ev.id, False))
        self.maybe_waiting = True
        return results

    def find(self, dedup_key: str) -> str | None:
        """The id of the spooled event with this dedup key, if any."""
        with self.tx(write=False) as tx:
            row = tx.one("SELECT id FROM spooled WHERE dedup_key = ?", (dedup_key,))
        return row["id"] if row else None

    def ping(self) -> None:
        """Raises unless a write could commit now (readiness): it writes and fsyncs a page,
        as spooling does (a transaction that changes nothing commits even on a full disk)."""
        with self.tx() as tx:
            tx.exec("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)", (time.time(),))

    # ------------------------------------------------------------ draining

    def has_waiting(self) -> bool:
        with self.tx(write=False) as tx:
            self.maybe_waiting = tx.one("SELECT 1 AS x FROM spooled LIMIT 1") is not None
        return self.maybe_waiting

    def oldest(self, limit: int) -> list[NewEvent]:
        """The oldest waiting events (not held back after a failed move), oldest first.
        A record among them that cannot be read is set aside (:meth:`set_aside`)."""
        with self.tx(write=False) as tx:
            rows = tx.all("SELECT seq, id, event, body FROM spooled WHERE held_until <= ? "
                          "ORDER BY seq LIMIT ?", (time.time(), limit))
        events = []
        for row in rows:
            try:
                events.append(_readable(row))
            except (ValueError, TypeError, KeyError) as exc:
                self.set_aside(row["seq"], f"unreadable record: {type(exc).__name__}")
        return events

    def set_aside(self, seq: int, reason: str) -> None:
        """Move one record out of the way of the others, into ``set_aside``, kept whole."""
        with self.tx() as tx:
            row = tx.one("SELECT id FROM spooled WHERE seq = ?", (seq,))
            if row is None:
                return
            tx.exec(f"INSERT INTO set_aside ({COLUMNS}, drain_error, set_aside_at) "
                    f"SELECT {COLUMNS}, ?, ? FROM spooled WHERE seq = ?",
                    (reason, time.time(), seq))
            tx.exec("DELETE FROM spooled WHERE seq = ?", (seq,))
        metrics.SPOOL_SET_ASIDE.inc()
        logs.event(log, "spooled record cannot be read; set aside, the rest drain",
                   logging.ERROR, event_id=printable(str(row["id"]), 80), reason=reason,
                   spool=str(self.path))

    def remove(self, ids: list[str]) -> None:
        with self.tx() as tx:
            tx.many("DELETE FROM spooled WHERE id = ?", [(i,) for i in ids])

    def hold(self, event_id: str, error: str, seconds: float) -> None:
        """An event the store refused (not for unavailability): try it again later, and
        let the others past it meanwhile; it stays listed with its error."""
        with self.tx() as tx:
            tx.exec("UPDATE spooled SET held_until = ?, drain_error = ? WHERE id = ?",
                    (time.time() + seconds, error[:500], event_id))

    @contextmanager
    def draining(self) -> Iterator[bool]:
        """One drainer per node at a time (the others skip): yields whether it is us. The
        lock is the kernel's, so a drainer killed with -9 holds it no longer."""
        fd = os.open(f"{self.path}.drain", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    # ------------------------------------------------------------ inspection

    def summary(self) -> dict[str, Any]:
        """How many wait, and since when (for /readyz and metrics)."""
        with self.tx(write=False) as tx:
            row = tx.one("SELECT count(*) AS n, min(received_at) AS t FROM spooled")
            aside = tx.one("SELECT count(*) AS n FROM set_aside")
        n, t = (row["n"], row["t"]) if row else (0, None)
        return {"spooled": n, "oldest_age_seconds": time.time() - t if t else 0.0,
                "room": max(0, self.max_events - n), "set_aside": aside["n"] if aside else 0}

    def listing(self, limit: int = 1000) -> list[dict[str, Any]]:
        """What waits, oldest first, then what was set aside (``set_aside``: True)."""
        with self.tx(write=False) as tx:
            rows = tx.all(f"SELECT {LISTED}, 0 AS set_aside FROM spooled ORDER BY seq "
                          "LIMIT ?", (limit,))
            rows += tx.all(f"SELECT {LISTED}, 1 AS set_aside FROM set_aside ORDER BY seq "
                           "LIMIT ?", (max(0, limit - len(rows)),))
        return [_listed(r) for r in rows]

    def get(self, event_id: str) -> dict[str, Any] | None:
        with self.tx(write=False) as tx:
            row = tx.one(f"SELECT {LISTED}, body, 0 AS set_aside FROM spooled WHERE id = ?",
                         (event_id,)) or \
                tx.one(f"SELECT {LISTED}, body, 1 AS set_aside FROM set_aside WHERE id = ? "
                       "ORDER BY seq LIMIT 1", (event_id,))
        if row is None:
            return None
        body = row.pop("body")
        listed = _listed(row)
        listed["body"] = body if isinstance(body, bytes) else str(body or "").encode()
        return listed


def _readable(row: dict[str, Any]) -> NewEvent:
    """The event a spooled record holds, or ValueError/TypeError/KeyError when it cannot be
    read back whole (so moving it could not delete it, or would plan the wrong thing)."""
    fields = json.loads(row["event"])
    body = row["body"]
    if not isinstance(fields, dict) or not isinstance(body, bytes):
        raise TypeError("not an event")
    event = NewEvent(**fields, body=body)
    if event.id != row["id"] or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v)
            for v in (event.rules, event.actions)):
        raise ValueError("not this record's event")
    return event


def _listed(row: dict[str, Any]) -> dict[str, Any]:
    """A record as listed; one whose routing plan cannot be read is shown without it."""
    try:
        fields = json.loads(row.pop("event"))
        fields = fields if isinstance(fields, dict) else {}
    except (ValueError, TypeError):
        fields = {}
    row.update(rules=_names(fields.get("rules")), actions=_names(fields.get("actions")),
               malformed=bool(fields.get("malformed")), generated_at=fields.get("generated_at"),
               set_aside=bool(row.get("set_aside")))
    return row


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def open_spool(config: Config) -> Spool | None:
    """The node's spool, if the config calls for one: enabled (the default) and a
    PostgreSQL store (the SQLite store needs none)."""
    if not config.spool.enabled or not config.store_url.startswith(("postgresql:", "postgres:")):
        return None
    path = Path(config.spool.path)
    return Spool(path if path.is_absolute() else config.base_dir / path, config.spool.max_events)


class Spooling:
    """The receiver's side: commit to the spool (group commit, as for the store) when the
    store cannot, and log once when this process starts spooling and once when it stops."""

    def __init__(self, spool: Spool):
        self.spool = spool
        self.active = False  # this process spooled since the store last committed
        self._count = 0
        self._commit: GroupCommit[NewEvent, Recorded | None] = GroupCommit(
            spool.add, spool.exclusive)
        self._lock = threading.Lock()

    def submit(self, event: NewEvent, why: StoreUnavailable) -> Recorded:
        """Spool ``event``; raises SpoolFull, or StoreUnavailable if the spool cannot commit."""
        try:
            recorded = self._commit.submit(event)
        except StoreUnavailable as exc:
            logs.event(log, "spool cannot commit either; answering 503", logging.ERROR,
                       error=str(exc)[:200])
            raise
        if recorded is None:
            raise SpoolFull("the store is unavailable and the local spool is full")
        with self._lock:
            if not self.active:
                self.active = True
                logs.event(log, "store unavailable; spooling locally", logging.WARNING,
                           error=str(why)[:200], spool=str(self.spool.path))
            self._count += 0 if recorded.duplicate else 1
        if not recorded.duplicate:
            metrics.SPOOLED.inc()
        return recorded

    def stopped(self) -> None:
        """The store committed again (called only while ``active``)."""
        with self._lock:
            if not self.active:
                return
            self.active, count, self._count = False, self._count, 0
        logs.event(log, "store available again; spooling stopped", logging.WARNING,
                   spooled=count)
