"""The store's side of recovery: recovered events, and the sessions waiting to be checked.

A success notification lists the encounter's ``sessions``. Each listed session without an
event of its own gets a row in ``recovery_sessions``; rows are checked against Suki's
status API when due (recovery.py), under a lease, so across nodes sharing one database no
two check the same session at once. States:

    waiting -> present     (its own event arrived: nothing to do)
            -> recovered   (completed/failed/aborted/skipped: an event was recorded)
            -> given_up    (still unfinished, or Suki unreachable, after give_up_after_hours)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from suki_relay.protocol import SUCCESS
from suki_relay.store.base import NewEvent, Recorded
from suki_relay.store.rows import RecoverySessionRow
from suki_relay.store.tx import Backend, Tx, chunks, marks

WAITING, PRESENT, RECOVERED, GIVEN_UP = "waiting", "present", "recovered", "given_up"

SCAN_CURSOR = "listed_sessions"
SESSION_COLUMNS = ", ".join(f.name for f in fields(RecoverySessionRow))


@dataclass(frozen=True)
class Listed:
    """A session named in a success event's ``sessions``."""

    session_id: str
    encounter_id: str | None
    listed_by: str  # the event id
    listed_at: float  # when that event was received


class RecoveryLedger(Backend):
    """Part of SqlStore: everything recovery reads and writes (tables: migration 2)."""

    def _record_in(self, tx: Tx, events: list[NewEvent]) -> list[Recorded]:
        raise NotImplementedError  # ledger.py's, in SqlStore

    # ------------------------------------------------------------ recovered events

    def event_for_session(self, session_id: str) -> str | None:
        """The id of an event already recorded for this session (received or recovered)."""
        with self.tx(write=False) as tx:
            row = tx.one("SELECT id FROM events WHERE session_id = ? ORDER BY received_at "
                         "LIMIT 1", (session_id,))
        return row["id"] if row else None

    def record_recovered(self, event: NewEvent) -> Recorded:
        """Record a recovered event unless its session has an event by now (checked in the
        same transaction); ``duplicate`` then names the event that was there. Its dedup key
        is ``recovered:<session>``, so two nodes recovering one session record it once."""
        with self.tx() as tx:
            row = tx.one("SELECT id FROM events WHERE session_id = ? ORDER BY received_at "
                         "LIMIT 1", (event.session_id,))
            if row is not None:
                return Recorded(row["id"], True)
            return self._record_in(tx, [event])[0]

    # ------------------------------------------------------------ sessions to check

    def success_events_since(self, since: float, limit: int) -> list[dict[str, Any]]:
        """Success events received at or after ``since`` (ids and times only), oldest first."""
        with self.tx(write=False) as tx:
            return tx.all("SELECT id, received_at FROM events WHERE received_at >= ? AND "
                          "status = ? AND malformed = 0 ORDER BY received_at, id LIMIT ?",
                          (since, SUCCESS, limit))

    def event_bodies(self, ids: Sequence[str]) -> dict[str, tuple[bytes, float]]:
        """Bodies and receipt times by event id."""
        out: dict[str, tuple[bytes, float]] = {}
        with self.tx(write=False) as tx:
            for part in chunks(ids):
                for r in tx.all(f"SELECT id, body, received_at FROM events WHERE id IN "
                                f"({marks(part)})", part):
                    out[r["id"]] = (bytes(r["body"]), r["received_at"])
        return out

    def recent_success_bodies(self, since: float, limit: int) -> list[tuple[str, bytes, float]]:
        """Success events' (id, body, received_at), newest first: for looking up an
        encounter by one of its sessions when nothing else knows it."""
        with self.tx(write=False) as tx:
            return [(r["id"], bytes(r["body"]), r["received_at"]) for r in tx.all(
                "SELECT id, body, received_at FROM events WHERE received_at >= ? AND "
                "status = ? AND malformed = 0 ORDER BY received_at DESC LIMIT ?",
                (since, SUCCESS, limit))]

    def scan_cursor(self) -> float | None:
        with self.tx(write=False) as tx:
            row = tx.one("SELECT received_at FROM recovery_cursor WHERE name = ?",
                         (SCAN_CURSOR,))
        return row["received_at"] if row else None

    def note_listed(self, listed: list[Listed], grace_seconds: float,
                    cursor: float | None = None) -> int:
        """Add sessions to check (those without an event of their own, not known yet),
        each due ``grace_seconds`` after the event that listed it; move the scan cursor
        forward to ``cursor``. Returns how many were added."""
        now = time.time()
        added = 0
        with self.tx(durable=False) as tx:
            for part in chunks(listed):
                ids = [s.session_id for s in part]
                have = {r["session_id"] for r in tx.all(
                    f"SELECT session_id FROM events WHERE session_id IN ({marks(ids)})", ids)}
                have |= {r["session_id"] for r in tx.all(
                    f"SELECT session_id FROM recovery_sessions WHERE session_id IN "
                    f"({marks(ids)})", ids)}
                new = {s.session_id: s for s in part if s.session_id not in have}
                tx.many("INSERT INTO recovery_sessions (session_id, encounter_id, listed_by, "
                        "first_seen, next_check_at, state, updated_at) VALUES "
                        "(?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session_id) DO NOTHING",
                        [(s.session_id, s.encounter_id, s.listed_by, s.listed_at,
                          s.listed_at + grace_seconds, WAITING, now) for s in new.values()])
                added += len(new)
            if cursor is not None:
                cur = tx.exec("UPDATE recovery_cursor SET received_at = ? WHERE name = ? "
                              "AND received_at < ?", (cursor, SCAN_CURSOR, cursor))
                if cur.rowcount == 0:
                    tx.exec("INSERT INTO recovery_cursor (name, received_at) VALUES (?, ?) "
                            "ON CONFLICT (name) DO NOTHING", (SCAN_CURSOR, cursor))
        return added

    def claim_checks(self, owner: str, limit: int, lease_seconds: float) -> list[dict[str, Any]]:
        """Lease up to ``limit`` sessions that are due for a check and that no one holds."""
        now = time.time()
        lock = " FOR UPDATE SKIP LOCKED" if self.skip_locked else ""
        with self.tx(write=False) as tx:  # a look without the write lock first
            if not tx.one("SELECT 1 AS due FROM recovery_sessions WHERE state = ? AND "
                          "next_check_at <= ? LIMIT 1", (WAITING, now)):
                return []
        with self.tx(durable=False) as tx:
            rows = tx.all("SELECT session_id, encounter_id, listed_by, first_seen, checks "
                          "FROM recovery_sessions WHERE state = ? AND next_check_at <= ? AND "
                          "(lease_until IS NULL OR lease_until < ?) ORDER BY next_check_at "
                          f"LIMIT ?{lock}", (WAITING, now, now, limit))
            tx.many("UPDATE recovery_sessions SET lease_owner = ?, lease_until = ?, "
                    "updated_at = ? WHERE session_id = ?",
                    [(owner, now + lease_seconds, now, r["session_id"]) for r in rows])
        return rows

    def finish_check(self, session_id: str, owner: str, state: str, *,
                     next_check_at: float | None = None, last_status: str | None = None,
                     event_id: str | None = None) -> bool:
        """Record one check's result and give the lease back; False if it was lost."""
        now = time.time()
        with self.tx(durable=False) as tx:
            cur = tx.exec("UPDATE recovery_sessions SET state = ?, next_check_at = ?, "
                          "checks = checks + 1, last_status = ?, event_id = ?, "
                          "lease_owner = NULL, lease_until = NULL, updated_at = ? "
                          "WHERE session_id = ? AND lease_owner = ?",
                          (state, next_check_at or now, last_status, event_id, now,
                           session_id, owner))
            return bool(cur.rowcount == 1)

    def listed_encounter(self, session_id: str) -> str | None:
        """The encounter a success event's ``sessions`` tied this session to, if noted."""
        with self.tx(write=False) as tx:
            row = tx.one("SELECT encounter_id FROM recovery_sessions WHERE session_id = ?",
                         (session_id,))
        return row["encounter_id"] if row else None

    def recovery_sessions(self, state: str | None = None,
                          limit: int = 100) -> list[RecoverySessionRow]:
        """Sessions known to recovery, most recently changed first."""
        where, params = ("WHERE state = ?", [state]) if state else ("", [])
        with self.tx(write=False) as tx:
            return [RecoverySessionRow(*row) for row in tx.tuples(
                f"SELECT {SESSION_COLUMNS} FROM recovery_sessions {where} "
                "ORDER BY updated_at DESC LIMIT ?", (*params, limit))]

    def recovery_counts(self) -> dict[str, int]:
        with self.tx(write=False) as tx:
            return {r["state"]: r["n"] for r in tx.all(
                "SELECT state, count(*) AS n FROM recovery_sessions GROUP BY state")}

    def prune_recovery(self, before: float) -> int:
        """Forget finished sessions last changed before ``before``."""
        with self.tx() as tx:
            return int(tx.exec("DELETE FROM recovery_sessions WHERE state <> ? AND "
                               "updated_at < ?", (WAITING, before)).rowcount)
