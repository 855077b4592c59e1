"""The store over SQL, written once for both backends (SQLite and PostgreSQL).

A backend supplies connections and its few dialect differences (placeholders, the binary
type, how claiming is serialised); everything the relay does with its ledger is here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import StoreIncompatible
from .base import (
    DONE,
    FAILED,
    IN_FLIGHT,
    PENDING,
    Claimed,
    ClaimRequest,
    EventFilter,
    NewEvent,
    Outcome,
    Recorded,
    Store,
    new_id,
)

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    received_at DOUBLE PRECISION NOT NULL,
    dedup_key TEXT NOT NULL UNIQUE,
    generated_at BIGINT,
    status TEXT,
    session_id TEXT,
    encounter_id TEXT,
    malformed INTEGER NOT NULL DEFAULT 0,
    matched INTEGER NOT NULL DEFAULT 0,
    rules TEXT NOT NULL DEFAULT '[]',
    body {blob} NOT NULL
);
CREATE INDEX IF NOT EXISTS events_received_at ON events (received_at);
CREATE INDEX IF NOT EXISTS events_session ON events (session_id);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    action TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    cycle_started_at DOUBLE PRECISION NOT NULL,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    last_error TEXT,
    last_status INTEGER,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_id);
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    duration DOUBLE PRECISION NOT NULL,
    outcome TEXT NOT NULL,
    http_status INTEGER,
    error TEXT,
    note TEXT
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id);
"""

EVENT_COLUMNS = ("id, received_at, generated_at, status, session_id, encounter_id, malformed, "
                 "matched, rules")
ERROR_MAX = 500
INSERT_EVENTS = ("INSERT INTO events (id, received_at, dedup_key, generated_at, status, "
                 "session_id, encounter_id, malformed, matched, rules, body) VALUES ")
EVENT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_DELIVERIES = ("INSERT INTO deliveries (id, event_id, action, state, cycle_started_at, "
                     "next_attempt_at, updated_at) VALUES ")
DELIVERY_ROW = "(?, ?, ?, ?, ?, ?, ?)"
ROWS_PER_INSERT = 500  # within both backends' limits on parameters per statement
DUE = "(state = ? AND next_attempt_at <= ?) OR (state = ? AND lease_until < ?)"
CLAIM_SELECT = ("SELECT d.id, d.event_id, d.action, d.attempts, d.tries, d.cycle_started_at, "
                "d.state, e.body, e.received_at FROM deliveries d JOIN events e ON e.id = d.event_id")


def _not_in(actions: list[str], prefix: str = "") -> str:
    """A condition leaving out deliveries of these actions (parameters follow)."""
    return f" AND {prefix}action NOT IN ({', '.join('?' * len(actions))})" if actions else ""


def _short(error: str | None) -> str | None:
    return error[:ERROR_MAX] if error else None


class Tx:
    """A cursor in one transaction; SQL is written with ``?`` placeholders."""

    def __init__(self, cursor: Any, placeholder: str):
        self.cursor = cursor
        self.placeholder = placeholder

    def exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.placeholder != "?":
            sql = sql.replace("?", self.placeholder)
        self.cursor.execute(sql, params)
        return self.cursor

    def many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        if rows:
            if self.placeholder != "?":
                sql = sql.replace("?", self.placeholder)
            self.cursor.executemany(sql, rows)

    def insert(self, head: str, row: str, rows: list[Sequence[Any]], tail: str = "") -> int:
        """``rows`` in multi-row INSERTs (``head`` + ``row``, ``row``, ... + ``tail``) of at
        most ROWS_PER_INSERT rows each; returns how many rows were inserted."""
        inserted = 0
        for i in range(0, len(rows), ROWS_PER_INSERT):
            chunk = rows[i:i + ROWS_PER_INSERT]
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


class SqlStore(Store):
    placeholder = "?"
    blob_type = "BLOB"
    skip_locked = ""

    @contextmanager
    def tx(self, write: bool = True, durable: bool = True) -> Iterator[Tx]:
        """A transaction. ``durable=False``: its commit need not reach the disk before it
        returns (a crash of the machine may undo it, a crash of the process cannot); for
        claims and lease renewals, which are re-derived from leases if lost."""
        raise NotImplementedError
        yield  # pragma: no cover

    def lock_claims(self, tx: Tx) -> None:
        """Serialise claimers, so per-action concurrency limits hold across processes."""

    def lock_schema(self, tx: Tx) -> None:
        """Serialise schema creation and upgrades between nodes starting together."""

    def ensure_schema(self) -> None:
        """Create or upgrade the schema, unless it is current (then no DDL, no locks)."""
        try:
            with self.tx(write=False) as tx:
                row = tx.one("SELECT max(version) AS v FROM relay_schema")
            if row and row["v"] == SCHEMA_VERSION:
                return
        except Exception:  # no schema yet (if the store is unreachable, creating it says so)
            pass
        with self.tx() as tx:
            self.lock_schema(tx)
            self.create_schema(tx)

    def create_schema(self, tx: Tx) -> None:
        for statement in SCHEMA.format(blob=self.blob_type).split(";"):
            if statement.strip():
                tx.exec(statement)
        tx.exec("CREATE TABLE IF NOT EXISTS relay_schema (version INTEGER NOT NULL)")
        row = tx.one("SELECT max(version) AS v FROM relay_schema")
        version = row["v"] if row else None
        if version is None:
            tx.exec("INSERT INTO relay_schema (version) VALUES (?)", (SCHEMA_VERSION,))
        elif version > SCHEMA_VERSION:
            raise StoreIncompatible(f"store schema version {version} is newer than this relay "
                               f"({SCHEMA_VERSION}): upgrade suki-relay")

    # ------------------------------------------------------------ the request path

    def record(self, events: list[NewEvent]) -> list[Recorded]:
        """A whole batch in as few statements as possible: each statement is a round trip
        (PostgreSQL) or a release of the GIL (SQLite), and both lengthen the time the write
        lock is held. A dedup key seen before keeps its first event and plans nothing."""
        with self.tx() as tx:
            inserted = tx.insert(INSERT_EVENTS, EVENT_ROW, [(
                ev.id, ev.received_at, ev.dedup_key, ev.generated_at, ev.status, ev.session_id,
                ev.encounter_id, int(ev.malformed), int(bool(ev.rules)), json.dumps(ev.rules),
                ev.body) for ev in events], " ON CONFLICT (dedup_key) DO NOTHING")
            owner = {ev.dedup_key: ev.id for ev in events}
            if inserted != len(events):  # a duplicate: find which event holds each key
                keys = list(owner)
                owner = {r["dedup_key"]: r["id"] for r in tx.all(
                    f"SELECT id, dedup_key FROM events WHERE dedup_key IN "
                    f"({', '.join('?' * len(keys))})", keys)}
            self._plan(tx, [(ev.id, action, ev.received_at) for ev in events
                            if owner.get(ev.dedup_key) == ev.id for action in ev.actions])
        return [Recorded(owner.get(ev.dedup_key, ev.id), owner.get(ev.dedup_key) != ev.id)
                for ev in events]

    def _plan(self, tx: Tx, planned: list[tuple[str, str, float]]) -> list[str]:
        """Insert pending deliveries, one per (event id, action, time planned)."""
        ids = [new_id("dlv") for _ in planned]
        tx.insert(INSERT_DELIVERIES, DELIVERY_ROW, [
            (i, event_id, action, PENDING, at, at, at)
            for i, (event_id, action, at) in zip(ids, planned, strict=True)])
        return ids

    # ------------------------------------------------------------ the delivery path

    def claim(self, owner: str, limit: int, lease_seconds: float,
              concurrency: dict[str, int]) -> tuple[list[Claimed], frozenset[str]]:
        now = time.time()
        with self.tx(write=False) as tx:  # a look without the write lock: anything to take?
            _, full = self._room(tx, concurrency, now)
            due = tx.one(f"SELECT 1 AS due FROM deliveries WHERE ({DUE}){_not_in(full)} "
                         "LIMIT 1", (PENDING, now, IN_FLIGHT, now, *full))
        if not due:
            return [], frozenset(full)
        with self.tx(durable=False) as tx:
            return self._claim_in(tx, owner, limit, lease_seconds, concurrency), frozenset(full)

    def _room(self, tx: Tx, concurrency: dict[str, int],
              now: float) -> tuple[dict[str, int], list[str]]:
        """Free places per action under max_concurrency, and the actions with none."""
        busy = {r["action"]: r["n"] for r in tx.all(
            "SELECT action, count(*) AS n FROM deliveries WHERE state = ? AND lease_until >= ? "
            "GROUP BY action", (IN_FLIGHT, now))}
        room = {a: concurrency.get(a, 1) - busy.get(a, 0) for a in set(concurrency) | set(busy)}
        return room, [a for a, n in room.items() if n <= 0]

    def _claim_in(self, tx: Tx, owner: str, limit: int, lease_seconds: float,
                  concurrency: dict[str, int]) -> list[Claimed]:
        now = time.time()
        self.lock_claims(tx)
        room, full = self._room(tx, concurrency, now)
        if concurrency and all(room[a] <= 0 for a in concurrency):
            return []  # every action is at its limit: nothing to scan
        # two queries, each walking an index in order and stopping at its limit (one query
        # with OR would gather, join and sort the whole backlog on every claim): first
        # deliveries whose owner died mid-attempt, then pending ones, oldest due first
        rows = [row for state, column, op in ((IN_FLIGHT, "lease_until", "<"),
                                              (PENDING, "next_attempt_at", "<="))
                for row in tx.all(
                    f"{CLAIM_SELECT} WHERE d.state = ? AND d.{column} {op} ?"
                    f"{_not_in(full, 'd.')} ORDER BY d.{column} LIMIT ?{self.skip_locked}",
                    (state, now, *full, limit * 4))]
        claimed: list[Claimed] = []
        lost: list[tuple[Any, ...]] = []
        for row in rows:
            if len(claimed) >= limit:
                break
            action = row["action"]
            if room.get(action, 1) <= 0:
                continue
            room[action] = room.get(action, 1) - 1
            if row["state"] == IN_FLIGHT:  # its owner died mid-attempt
                lost.append((row["id"], row["attempts"], now,
                             "worker stopped before finishing; lease expired"))
            claimed.append(Claimed(
                row["id"], row["event_id"], action, row["attempts"] + 1, row["tries"] + 1,
                row["cycle_started_at"], bytes(row["body"]), row["received_at"]))
        tx.many("INSERT INTO attempts (delivery_id, attempt, started_at, duration, outcome, "
                "error) VALUES (?, ?, ?, 0, 'lost', ?)", lost)
        tx.many("UPDATE deliveries SET state = ?, lease_owner = ?, lease_until = ?, "
                "attempts = attempts + 1, tries = tries + 1, updated_at = ? WHERE id = ?",
                [(IN_FLIGHT, owner, now + lease_seconds, now, c.id) for c in claimed])
        return claimed

    def extend(self, owner: str, ids: list[str], lease_seconds: float) -> None:
        if not ids:
            return
        with self.tx(durable=False) as tx:
            tx.many("UPDATE deliveries SET lease_until = ? WHERE id = ? AND lease_owner = ? "
                    "AND state = ?",
                    [(time.time() + lease_seconds, i, owner, IN_FLIGHT) for i in ids])

    def finish(self, finished: list[tuple[Claimed, str, Outcome]],
               then_claim: ClaimRequest | None = None) -> list[Claimed]:
        """Record attempts and, in the same transaction, claim what comes next.

        A delivery whose lease was lost keeps its new owner's state. Not fsynced: if the
        machine loses power before the next durable commit, these deliveries are simply
        attempted again (at-least-once; the Idempotency-Key tells).
        """
        now = time.time()
        with self.tx(durable=False) as tx:
            tx.many("INSERT INTO attempts (delivery_id, attempt, started_at, duration, outcome, "
                    "http_status, error, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(c.id, c.attempt, r.started_at, r.duration, r.outcome, r.http_status,
                      _short(r.error), r.note) for c, _, r in finished])
            tx.many("UPDATE deliveries SET state = ?, next_attempt_at = ?, lease_owner = NULL, "
                    "lease_until = NULL, last_error = ?, last_status = ?, updated_at = ? "
                    "WHERE id = ? AND lease_owner = ? AND state = ?",
                    [(r.state, r.next_attempt_at or now, _short(r.error), r.http_status, now,
                      c.id, owner, IN_FLIGHT) for c, owner, r in finished])
            if then_claim is None or then_claim.limit <= 0:
                return []
            return self._claim_in(tx, then_claim.owner, then_claim.limit,
                                  then_claim.lease_seconds, then_claim.concurrency)

    def release(self, owner: str, ids: list[str] | None = None) -> int:
        """Give back claimed deliveries (shutdown): pending again, due now."""
        now = time.time()
        where = "lease_owner = ? AND state = ?"
        params: list[Any] = [owner, IN_FLIGHT]
        if ids is not None:
            if not ids:
                return 0
            where += f" AND id IN ({', '.join('?' * len(ids))})"
            params += ids
        with self.tx() as tx:
            cur = tx.exec(f"UPDATE deliveries SET state = ?, lease_owner = NULL, "
                          f"lease_until = NULL, next_attempt_at = ?, updated_at = ? WHERE {where}",
                          (PENDING, now, now, *params))
            return cur.rowcount

    def ping(self) -> None:
        with self.tx() as tx:
            tx.exec("UPDATE relay_schema SET version = version WHERE version < 0")

    # ------------------------------------------------------------ inspection and repair

    def events(self, f: EventFilter) -> list[dict[str, Any]]:
        where, params = ["1 = 1"], []
        for column, value in (("status", f.status), ("session_id", f.session_id),
                              ("encounter_id", f.encounter_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if f.since is not None:
            where.append("received_at >= ?")
            params.append(f.since)
        if f.until is not None:
            where.append("received_at < ?")
            params.append(f.until)
        if f.matched is not None:
            where.append("matched = ?")
            params.append(int(f.matched))
        if f.malformed is not None:
            where.append("malformed = ?")
            params.append(int(f.malformed))
        with self.tx(write=False) as tx:
            rows = tx.all(f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} "
                          "ORDER BY received_at DESC, id DESC LIMIT ?", (*params, f.limit))
            for row in rows:
                self._event_fields(row)
                counts = tx.all("SELECT state, count(*) AS n FROM deliveries WHERE event_id = ? "
                                "GROUP BY state", (row["id"],))
                row["deliveries"] = {c["state"]: c["n"] for c in counts}
        return rows

    @staticmethod
    def _event_fields(row: dict[str, Any]) -> None:
        row["rules"] = json.loads(row["rules"])
        row["malformed"] = bool(row["malformed"])
        row["matched"] = bool(row["matched"])

    def event(self, event_id: str) -> dict[str, Any] | None:
        with self.tx(write=False) as tx:
            row = tx.one(f"SELECT {EVENT_COLUMNS}, body FROM events WHERE id = ?", (event_id,))
            if row is None:
                return None
            self._event_fields(row)
            row["body"] = bytes(row["body"])
            row["delivery_list"] = tx.all(
                "SELECT * FROM deliveries WHERE event_id = ? ORDER BY id", (event_id,))
            for d in row["delivery_list"]:
                d["attempt_list"] = tx.all(
                    "SELECT * FROM attempts WHERE delivery_id = ? ORDER BY started_at, attempt",
                    (d["id"],))
        return row

    def deliveries(self, state: str | None = None, action: str | None = None,
                   event_id: str | None = None, since: float | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        where, params = ["1 = 1"], []
        for column, value in (("d.state", state), ("d.action", action), ("d.event_id", event_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("d.updated_at >= ?")
            params.append(since)
        with self.tx(write=False) as tx:
            return tx.all(
                "SELECT d.*, e.status AS event_status, e.session_id FROM deliveries d "
                f"JOIN events e ON e.id = d.event_id WHERE {' AND '.join(where)} "
                "ORDER BY d.updated_at DESC, d.id DESC LIMIT ?", (*params, limit))

    def attempts(self, delivery_id: str) -> list[dict[str, Any]]:
        with self.tx(write=False) as tx:
            return tx.all("SELECT * FROM attempts WHERE delivery_id = ? "
                          "ORDER BY started_at, attempt", (delivery_id,))

    def reopen(self, delivery_ids: list[str]) -> int:
        """Replay: due now, with a fresh retry budget; its attempts so far are kept."""
        if not delivery_ids:
            return 0
        now = time.time()
        with self.tx() as tx:
            tx.many("UPDATE deliveries SET state = ?, tries = 0, cycle_started_at = ?, "
                    "next_attempt_at = ?, updated_at = ? WHERE id = ? AND state <> ?",
                    [(PENDING, now, now, now, i, IN_FLIGHT) for i in delivery_ids])
        return len(delivery_ids)

    def add_deliveries(self, event_id: str, rules: list[str], actions: list[str]) -> list[str]:
        """Reroute: plan deliveries for actions the event does not have yet."""
        now = time.time()
        with self.tx() as tx:
            have = {r["action"] for r in tx.all(
                "SELECT action FROM deliveries WHERE event_id = ?", (event_id,))}
            new = [a for a in actions if a not in have]
            tx.exec("UPDATE events SET rules = ?, matched = ? WHERE id = ?",
                    (json.dumps(rules), int(bool(rules)), event_id))
            return self._plan(tx, [(event_id, action, now) for action in new])

    def prune(self, before: float) -> int:
        """Delete events received before ``before`` whose deliveries are all finished."""
        with self.tx() as tx:
            ids = [r["id"] for r in tx.all(
                "SELECT id FROM events e WHERE received_at < ? AND NOT EXISTS (SELECT 1 FROM "
                "deliveries d WHERE d.event_id = e.id AND d.state IN (?, ?))",
                (before, PENDING, IN_FLIGHT))]
            for chunk in range(0, len(ids), 500):
                part = ids[chunk:chunk + 500]
                marks = ", ".join("?" * len(part))
                tx.exec(f"DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries "
                        f"WHERE event_id IN ({marks}))", part)
                tx.exec(f"DELETE FROM deliveries WHERE event_id IN ({marks})", part)
                tx.exec(f"DELETE FROM events WHERE id IN ({marks})", part)
        return len(ids)

    def statuses(self, since: float) -> set[str]:
        with self.tx(write=False) as tx:
            rows = tx.all("SELECT DISTINCT status FROM events WHERE received_at >= ? AND "
                          "status IS NOT NULL AND malformed = 0", (since,))
        return {r["status"] for r in rows}

    def stats(self) -> dict[str, Any]:
        now = time.time()
        with self.tx(write=False) as tx:
            states = {r["state"]: r["n"] for r in tx.all(
                "SELECT state, count(*) AS n FROM deliveries GROUP BY state")}
            oldest = tx.one("SELECT min(cycle_started_at) AS t FROM deliveries WHERE state IN (?, ?)",
                            (PENDING, IN_FLIGHT))
            events = tx.one("SELECT count(*) AS n FROM events")
        t = oldest["t"] if oldest else None
        return {
            "events": events["n"] if events else 0,
            "deliveries": {s: states.get(s, 0) for s in (PENDING, IN_FLIGHT, DONE, FAILED)},
            "oldest_pending_age_seconds": (now - t) if t else 0.0,
        }
