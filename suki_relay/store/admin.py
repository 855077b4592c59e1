"""Inspection and repair: what the CLI and metrics read, and replay, reroute and prune.

Reads return typed rows (rows.py) whose columns are named here, never ``SELECT *``: a
column a later migration adds appears in a row only when a field is added for it.
"""

from __future__ import annotations

import json
import socket
import time
from collections import defaultdict
from dataclasses import fields
from typing import Any

from suki_relay.store.base import DONE, FAILED, IN_FLIGHT, PENDING, UNKNOWN, EventFilter
from suki_relay.store.ledger import plan
from suki_relay.store.rows import (
    Activity,
    AttemptRow,
    ConfigVersionRow,
    DeliveryDetail,
    DeliveryListRow,
    DeliveryRow,
    EventDetail,
    EventRow,
    Stats,
)
from suki_relay.store.tx import ROWS_PER_INSERT, Backend, Tx, chunks, marks

FAILURES_KEPT_SECONDS = 86400.0  # a sign-in key with no failure for a day starts afresh


def _columns(row_type: type, prefix: str = "") -> str:
    return ", ".join(prefix + f.name for f in fields(row_type))


EVENT_COLUMNS = _columns(EventRow).removesuffix(", deliveries, actions")  # not columns
DELIVERY_COLUMNS = _columns(DeliveryRow, "d.")
ATTEMPT_COLUMNS = _columns(AttemptRow)


def _event(row: tuple[Any, ...], deliveries: dict[str, int] | None = None,
           actions: list[str] | None = None) -> EventRow:
    (id_, received_at, generated_at, status, session_id, encounter_id, malformed, matched,
     rules, recovered, config_version) = row[:11]
    return EventRow(id_, received_at, generated_at, status, session_id, encounter_id,
                    bool(malformed), bool(matched), json.loads(rules), bool(recovered),
                    config_version,
                    deliveries or {}, actions or [])


class Admin(Backend):
    def events(self, f: EventFilter) -> list[EventRow]:
        where, params = ["1 = 1"], list[Any]()
        for column, text in (("status", f.status), ("session_id", f.session_id),
                             ("encounter_id", f.encounter_id)):
            if text is not None:
                where.append(f"{column} = ?")
                params.append(text)
        for condition, value in (("received_at >= ?", f.since), ("received_at < ?", f.until),
                                 ("matched = ?", f.matched), ("malformed = ?", f.malformed),
                                 ("recovered = ?", f.recovered)):
            if value is not None:
                where.append(condition)
                params.append(int(value) if isinstance(value, bool) else value)
        if f.before is not None:  # the next page: after the last row shown, in the same order
            where.append("(received_at < ? OR (received_at = ? AND id < ?))")
            params += [f.before[0], f.before[0], f.before[1]]
        with self.tx(write=False) as tx:
            rows = tx.tuples(f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} "
                             "ORDER BY received_at DESC, id DESC LIMIT ?", (*params, f.limit))
            counts: dict[str, dict[str, int]] = defaultdict(dict)
            actions: dict[str, list[str]] = defaultdict(list)
            ids = [row[0] for row in rows]
            for part in chunks(ids):
                for event_id, action, state, n in tx.tuples(
                        f"SELECT event_id, action, state, count(*) FROM deliveries WHERE "
                        f"event_id IN ({marks(part)}) GROUP BY event_id, action, state "
                        "ORDER BY event_id, action", part):
                    counts[event_id][state] = counts[event_id].get(state, 0) + n
                    if action not in actions[event_id]:
                        actions[event_id].append(action)
        return [_event(row, counts.get(row[0]), actions.get(row[0])) for row in rows]

    def event(self, event_id: str) -> EventDetail | None:
        with self.tx(write=False) as tx:
            found = tx.tuples(f"SELECT {EVENT_COLUMNS}, body FROM events WHERE id = ?",
                              (event_id,))
            if not found:
                return None
            deliveries = [DeliveryRow(*row) for row in tx.tuples(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.event_id = ? "
                "ORDER BY d.id", (event_id,))]
            attempts: dict[str, list[AttemptRow]] = defaultdict(list)
            for row in tx.tuples(
                    f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id IN (SELECT id "
                    "FROM deliveries WHERE event_id = ?) ORDER BY started_at, attempt",
                    (event_id,)):
                attempts[row[0]].append(AttemptRow(*row))
        counts: dict[str, int] = defaultdict(int)
        for d in deliveries:
            counts[d.state] += 1
        return EventDetail(_event(found[0], dict(counts)), bytes(found[0][-1]),
                           [DeliveryDetail(d, attempts.get(d.id, [])) for d in deliveries])

    def count_events(self, since: float) -> int:
        with self.tx(write=False) as tx:
            row = tx.one("SELECT count(*) AS n FROM events WHERE received_at >= ?", (since,))
        return int(row["n"]) if row else 0

    def deliveries(self, state: str | None = None, action: str | None = None,
                   event_id: str | None = None, since: float | None = None,
                   limit: int = 100, until: float | None = None,
                   delivery_id: str | None = None) -> list[DeliveryRow]:
        where, params = ["1 = 1"], []
        for condition, value in (("d.state = ?", state), ("d.action = ?", action),
                                 ("d.event_id = ?", event_id), ("d.updated_at >= ?", since),
                                 ("d.updated_at <= ?", until), ("d.id = ?", delivery_id)):
            if value is not None:
                where.append(condition)
                params.append(value)
        with self.tx(write=False) as tx:
            return [DeliveryListRow(*row) for row in tx.tuples(
                f"SELECT {DELIVERY_COLUMNS}, e.status, e.session_id FROM deliveries d "
                f"JOIN events e ON e.id = d.event_id WHERE {' AND '.join(where)} "
                "ORDER BY d.updated_at DESC, d.id DESC LIMIT ?", (*params, limit))]

    def delivery_states(self) -> dict[str, int]:
        """Deliveries by state: every state the store holds (an action may add its own)."""
        with self.tx(write=False) as tx:
            return {r["state"]: r["n"] for r in tx.all(
                "SELECT state, count(*) AS n FROM deliveries GROUP BY state ORDER BY state")}

    def activity(self, since: float, limit: int = 200_000) -> Activity:
        """What the console's charts draw, since ``since``: when events were accepted,
        deliveries finished (and their events were received), refusals were last seen."""
        with self.tx(write=False) as tx:
            accepted = [r[0] for r in tx.tuples(
                "SELECT received_at FROM events WHERE received_at >= ? LIMIT ?", (since, limit))]
            done = [(r[0], r[1]) for r in tx.tuples(
                "SELECT d.updated_at, e.received_at FROM deliveries d JOIN events e "
                "ON e.id = d.event_id WHERE d.state = ? AND d.updated_at >= ? LIMIT ?",
                (DONE, since, limit))]
            failed = [r[0] for r in tx.tuples(
                "SELECT updated_at FROM deliveries WHERE state = ? AND updated_at >= ? LIMIT ?",
                (FAILED, since, limit))]
            refused = [(r[0], r[1]) for r in tx.tuples(
                "SELECT last_at, count FROM rejections WHERE last_at >= ?", (since,))]
        return Activity(accepted, done, failed, refused)

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

    def resolve(self, delivery_id: str, filed: str | None, by: str = "operator") -> str | None:
        """Settle a delivery whose outcome is unknown: done (``filed``, what the target
        holds, e.g. DocumentReference/ID) or, with ``filed`` None, pending again to be sent.
        Recorded as an attempt (outcome ``resolved``). The new state, or None if the
        delivery is not ``unknown`` (settled already, or never in doubt)."""
        now = time.time()
        state = DONE if filed else PENDING
        note = (f"settled by {by}: filed {filed}" if filed else
                f"settled by {by}: not filed; sending it")
        with self.tx() as tx:
            cur = tx.exec("UPDATE deliveries SET state = ?, attempts = attempts + 1, tries = 0, "
                          "cycle_started_at = ?, next_attempt_at = ?, last_error = NULL, "
                          "updated_at = ? WHERE id = ? AND state = ?",
                          (state, now, now, now, delivery_id, UNKNOWN))
            if cur.rowcount != 1:
                return None
            row = tx.one("SELECT attempts FROM deliveries WHERE id = ?", (delivery_id,))
            tx.exec("INSERT INTO attempts (delivery_id, attempt, started_at, duration, outcome, "
                    "note) VALUES (?, ?, ?, 0, 'resolved', ?)",
                    (delivery_id, row["attempts"] if row else 0, now, note[:500]))
        return state

    def add_deliveries(self, event_id: str, rules: list[str], actions: list[str]) -> list[str]:
        """Reroute: plan deliveries for actions the event does not have yet."""
        now = time.time()
        with self.tx() as tx:
            have = {r["action"] for r in tx.all(
                "SELECT action FROM deliveries WHERE event_id = ?", (event_id,))}
            new = [a for a in actions if a not in have]
            tx.exec("UPDATE events SET rules = ?, matched = ? WHERE id = ?",
                    (json.dumps(rules), int(bool(rules)), event_id))
            return plan(tx, [(event_id, action, now) for action in new])

    def prune(self, before: float) -> int:
        """Delete events received before ``before`` whose deliveries are all finished, at
        most ROWS_PER_INSERT per transaction: the write lock (SQLite's, for the whole file)
        is let go between batches, so notifications are committed while a prune of months
        of events runs, each waiting for one batch at most, not for the whole prune."""
        deleted = 0
        while True:
            with self.tx() as tx:
                ids = [r["id"] for r in tx.all(
                    "SELECT id FROM events e WHERE received_at < ? AND NOT EXISTS (SELECT 1 "
                    "FROM deliveries d WHERE d.event_id = e.id AND d.state IN (?, ?)) LIMIT ?",
                    (before, PENDING, IN_FLIGHT, ROWS_PER_INSERT))]
                if ids:
                    _delete_events(tx, ids)
            deleted += len(ids)
            if len(ids) < ROWS_PER_INSERT:
                return deleted

    def remember_config(self, version: str, file: str) -> None:
        with self.tx() as tx:
            tx.exec("INSERT INTO config_versions (version, first_used_at, file, host) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (version) DO NOTHING",
                    (version, time.time(), file, socket.gethostname()))

    def config_versions(self) -> list[ConfigVersionRow]:
        with self.tx(write=False) as tx:
            return [ConfigVersionRow(*row) for row in tx.tuples(
                f"SELECT {_columns(ConfigVersionRow)} FROM config_versions "
                "ORDER BY first_used_at, version")]

    def sign_out(self, session: str, expires_at: float) -> None:
        with self.tx() as tx:
            tx.exec("DELETE FROM console_signouts WHERE expires_at < ?", (time.time(),))
            tx.exec("INSERT INTO console_signouts (nonce, expires_at) VALUES (?, ?) "
                    "ON CONFLICT (nonce) DO NOTHING", (session, expires_at))

    def signed_out(self, session: str) -> bool:
        with self.tx(write=False) as tx:
            return tx.one("SELECT 1 AS gone FROM console_signouts WHERE nonce = ?",
                          (session,)) is not None

    def sign_in_wait(self, keys: list[str]) -> float:
        now = time.time()
        with self.tx(write=False) as tx:
            row = tx.one(f"SELECT max(refused_until) AS t FROM console_failures "
                         f"WHERE key IN ({marks(keys)})", keys)
        until = row["t"] if row and row["t"] is not None else now
        return max(0.0, float(until) - now)

    def sign_in_failed(self, keys: list[str], free: int, longest: float) -> None:
        now = time.time()
        with self.tx() as tx:
            tx.exec("DELETE FROM console_failures WHERE updated_at < ?",
                    (now - FAILURES_KEPT_SECONDS,))
            for key in sorted(keys):  # one order for every process: no deadlock
                tx.exec("INSERT INTO console_failures (key, failures, refused_until, "
                        "updated_at) VALUES (?, 1, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                        "failures = console_failures.failures + 1, updated_at = ?",
                        (key, now, now, now))
                row = tx.one("SELECT failures FROM console_failures WHERE key = ?", (key,))
                n = int(row["failures"]) if row else 1
                delay = 0.0 if n < free else min(longest, 2.0 ** min(n - free, 64))
                tx.exec("UPDATE console_failures SET refused_until = ? WHERE key = ?",
                        (now + delay, key))

    def sign_in_succeeded(self, keys: list[str]) -> None:
        with self.tx() as tx:
            tx.exec(f"DELETE FROM console_failures WHERE key IN ({marks(keys)})", keys)

    def statuses(self, since: float) -> set[str]:
        with self.tx(write=False) as tx:
            rows = tx.all("SELECT DISTINCT status FROM events WHERE received_at >= ? AND "
                          "status IS NOT NULL AND malformed = 0", (since,))
        return {r["status"] for r in rows}

    def stats(self) -> Stats:
        now = time.time()
        with self.tx(write=False) as tx:
            states = {r["state"]: r["n"] for r in tx.all(
                "SELECT state, count(*) AS n FROM deliveries GROUP BY state")}
            oldest = tx.one("SELECT min(cycle_started_at) AS t FROM deliveries WHERE state IN (?, ?)",
                            (PENDING, IN_FLIGHT))
            events = tx.one("SELECT count(*) AS n FROM events")
        t = oldest["t"] if oldest else None
        return Stats(events=events["n"] if events else 0,
                     deliveries={s: states.get(s, 0) for s in (PENDING, IN_FLIGHT, DONE, FAILED, UNKNOWN)},
                     oldest_pending_age_seconds=(now - t) if t else 0.0)


def _delete_events(tx: Tx, ids: list[str]) -> None:
    """Events with their deliveries and attempts (children first: no cascade is relied on)."""
    tx.exec(f"DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries "
            f"WHERE event_id IN ({marks(ids)}))", ids)
    tx.exec(f"DELETE FROM deliveries WHERE event_id IN ({marks(ids)})", ids)
    tx.exec(f"DELETE FROM events WHERE id IN ({marks(ids)})", ids)
