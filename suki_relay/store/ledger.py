"""The ledger: what the request path and the delivery path write.

record() commits a batch of events with their planned deliveries; claim() leases due
deliveries; extend() renews leases; finish() records attempts and claims the next in the
same transaction; release() gives leases back at shutdown. Every statement here is on a
hot path: a batch is one multi-row INSERT per table, and claims walk indexes in order.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Collection
from typing import Any

from suki_relay.errors import StoreUnavailable
from suki_relay.store.base import (
    IN_FLIGHT,
    PENDING,
    Claimed,
    ClaimRequest,
    NewEvent,
    Outcome,
    Recorded,
    new_id,
)
from suki_relay.store.health import (
    PAUSED,
    Change,
    PausePolicy,
    note_attempts,
    probes_taken,
)
from suki_relay.store.tx import Backend, Tx, chunks, marks

ERROR_MAX = 500
INSERT_EVENTS = ("INSERT INTO events (id, received_at, dedup_key, generated_at, status, "
                 "session_id, encounter_id, malformed, matched, rules, body, recovered, "
                 "config_version) VALUES ")
EVENT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_DELIVERIES = ("INSERT INTO deliveries (id, event_id, action, state, cycle_started_at, "
                     "next_attempt_at, updated_at) VALUES ")
DELIVERY_ROW = "(?, ?, ?, ?, ?, ?, ?)"
DUE = "(state = ? AND next_attempt_at <= ?) OR (state = ? AND lease_until < ?)"
CLAIM_SELECT = ("SELECT d.id, d.event_id, d.action, d.attempts, d.tries, d.cycle_started_at, "
                "d.state, d.cause, d.cut_off, e.body, e.received_at, e.recovered "
                "FROM deliveries d JOIN events e ON e.id = d.event_id")
# an attempt's outcome the relay never learnt: its lease ran out, or it was handed back
# (release) while still under way; the next attempt is a takeover (Claimed.taken_over)
LOST = ("INSERT INTO attempts (delivery_id, attempt, started_at, duration, outcome, error) "
        "VALUES (?, ?, ?, 0, 'lost', ?)")
EXPIRED = "worker stopped before finishing; lease expired"
HANDED_BACK = "worker stopped before finishing; handed back mid-attempt"


def _not_in(actions: list[str], prefix: str = "") -> str:
    """A condition leaving out deliveries of these actions (parameters follow)."""
    return f" AND {prefix}action NOT IN ({marks(actions)})" if actions else ""


def _short(error: str | None) -> str | None:
    return error[:ERROR_MAX] if error else None


# deliveries in flight per action, and (n = -1) the paused actions with their probes
BUSY_OR_PAUSED = ("SELECT action, count(*) AS n, CAST(NULL AS DOUBLE PRECISION) AS probe_at, "
                  "CAST(NULL AS DOUBLE PRECISION) AS probe_every "
                  "FROM deliveries WHERE state = ? AND lease_until >= ? GROUP BY action "
                  "UNION ALL SELECT action, -1 AS n, probe_at, probe_every FROM action_health "
                  f"WHERE state = '{PAUSED}'")

# an attempt's end, recorded only while its owner still holds the lease (its outcome is
# known: the next attempt is no takeover)
FINISH = ("UPDATE deliveries SET state = ?, next_attempt_at = ?, lease_owner = NULL, "
          "lease_until = NULL, last_error = ?, last_status = ?, updated_at = ?, cut_off = 0 "
          "WHERE id = ? AND lease_owner = ? AND state = ?")


# A lease runs out lease_seconds after its owner last renewed it; but while no claimer can
# reach the store (a database restart) no owner can renew, though its attempt is under way
# and will be recorded once it reaches the store again. So every claimer notes in the
# lease clock, by the database's clock, when it reached the store (extend(), every
# lease_seconds / 4 while it runs, leases or not); the first to reach it after a silence
# of over half a lease renews every lease for one more lease_seconds before anything is
# taken over: a living owner renews its own at once, a dead one's (kill -9 during the
# outage) runs out then. Written under the claim lock only, so no claim takes a lease over
# between a silence ending and its leases being renewed.
SEEN = "SELECT seen_at, {now} AS now FROM lease_clock WHERE id = 1"
NOTE_SEEN = ("INSERT INTO lease_clock (id, seen_at) VALUES (1, {now}) "
             "ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at")
# rows another transaction holds are skipped: that one is their owner finishing them
RENEW_ALL = ("UPDATE deliveries SET lease_until = ? WHERE id IN (SELECT d.id FROM "
             "deliveries d WHERE d.state = ? AND d.lease_until < ?{skip_locked})")


def _finished(c: Claimed, owner: str, r: Outcome, now: float) -> tuple[Any, ...]:
    return (r.state, r.next_attempt_at or now, _short(r.error), r.http_status, now, c.id,
            owner, IN_FLIGHT)


def plan(tx: Tx, planned: list[tuple[str, str, float]]) -> list[str]:
    """Insert pending deliveries, one per (event id, action, time planned); their ids."""
    ids = [new_id("dlv") for _ in planned]
    tx.insert(INSERT_DELIVERIES, DELIVERY_ROW, [
        (i, event_id, action, PENDING, at, at, at)
        for i, (event_id, action, at) in zip(ids, planned, strict=True)])
    return ids


class Ledger(Backend):
    # ------------------------------------------------------------ the request path

    def record(self, events: list[NewEvent]) -> list[Recorded]:
        """A whole batch in as few statements as possible: each statement is a round trip
        (PostgreSQL) or a release of the GIL (SQLite), and both lengthen the time the write
        lock is held. A dedup key seen before keeps its first event and plans nothing."""
        with self.tx() as tx:
            return self._record_in(tx, events)

    def record_each(self, events: list[NewEvent], fallback: Callable[[NewEvent], NewEvent]
                    ) -> list[Recorded | Exception]:
        """The one place that isolates an event the store refuses (group commit after a
        failed batch, the spool's drain): one transaction, each event under a savepoint.
        An event refused as it is (not for unavailability) is recorded as
        ``fallback(event)`` instead (``Recorded.fallback``); if that is refused too, its
        error is its result. The others commit. Raises StoreUnavailable."""
        results: list[Recorded | Exception] = []
        with self.tx() as tx:
            for ev in events:
                result = self._record_one(tx, ev)
                if isinstance(result, Exception):
                    kept = self._record_one(tx, fallback(ev))
                    if isinstance(kept, Recorded):
                        result = dataclasses.replace(kept, fallback=True)
                results.append(result)
        return results

    def _record_one(self, tx: Tx, event: NewEvent) -> Recorded | Exception:
        tx.exec("SAVEPOINT one_event")
        try:
            recorded = self._record_in(tx, [event])[0]
        except StoreUnavailable:
            raise
        except Exception as exc:
            if isinstance(exc, self.unavailable):
                raise
            tx.exec("ROLLBACK TO SAVEPOINT one_event")
            tx.exec("RELEASE SAVEPOINT one_event")
            return exc
        tx.exec("RELEASE SAVEPOINT one_event")
        return recorded

    def _record_in(self, tx: Tx, events: list[NewEvent]) -> list[Recorded]:
        inserted = tx.insert(INSERT_EVENTS, EVENT_ROW, [(
            ev.id, ev.received_at, ev.dedup_key, ev.generated_at, ev.status, ev.session_id,
            ev.encounter_id, int(ev.malformed), int(bool(ev.rules)), json.dumps(ev.rules),
            ev.body, int(ev.recovered), ev.config_version) for ev in events],
            " ON CONFLICT (dedup_key) DO NOTHING")
        owner = {ev.dedup_key: ev.id for ev in events}
        if inserted != len(events):  # a duplicate: find which event holds each key
            keys = list(owner)
            owner = {r["dedup_key"]: r["id"] for r in tx.all(
                f"SELECT id, dedup_key FROM events WHERE dedup_key IN "
                f"({marks(keys)})", keys)}
        covered = self._recovered_already(tx, events)
        plan(tx, [(ev.id, action, ev.received_at) for ev in events
                  if owner.get(ev.dedup_key) == ev.id and (ev.session_id, ev.status) not in covered
                  for action in ev.actions])
        return [Recorded(owner.get(ev.dedup_key, ev.id), owner.get(ev.dedup_key) != ev.id)
                for ev in events]

    @staticmethod
    def _recovered_already(tx: Tx, events: list[NewEvent]) -> set[tuple[str, str]]:
        """(session, status) of received events whose session was recovered already with
        that status: Suki's own notification, late (it waited in another node's spool, say),
        is recorded but plans nothing, so a session's note is delivered by one set of
        deliveries. One indexed look per batch, only for events that plan something."""
        sessions = list({ev.session_id for ev in events
                         if ev.session_id and ev.actions and not ev.recovered})
        found: set[tuple[str, str]] = set()
        for chunk in chunks(sessions):
            found.update((r["session_id"], r["status"]) for r in tx.all(
                f"SELECT session_id, status FROM events WHERE session_id IN ({marks(chunk)}) "
                "AND recovered = 1", chunk))
        return found

    def known(self, event_ids: list[str]) -> set[str]:
        found: set[str] = set()
        with self.tx(write=False) as tx:
            for chunk in chunks(event_ids):
                found.update(r["id"] for r in tx.all(
                    f"SELECT id FROM events WHERE id IN ({marks(chunk)})", chunk))
        return found

    # ------------------------------------------------------------ the delivery path

    def claim(self, owner: str, limit: int, lease_seconds: float,
              concurrency: dict[str, int]) -> tuple[list[Claimed], frozenset[str]]:
        now = time.time()
        with self.tx(write=False) as tx:  # a look without the write lock: anything to take?
            _, full, _ = self._room(tx, concurrency, now)
            due = tx.one(f"SELECT 1 AS due FROM deliveries WHERE ({DUE}){_not_in(full)} "
                         "LIMIT 1", (PENDING, now, IN_FLIGHT, now, *full))
        if not due:
            return [], frozenset(full)
        with self.tx(durable=False) as tx:
            return self._claim_in(tx, owner, limit, lease_seconds, concurrency), frozenset(full)

    def _room(self, tx: Tx, concurrency: dict[str, int], now: float,
              ) -> tuple[dict[str, int], list[str], dict[str, tuple[float | None, float]]]:
        """Free places per action under max_concurrency, the actions with none, and the
        paused actions (health.py; one statement for both). A paused action has no place
        but one for its probe, when it is due and none is in flight."""
        busy: dict[str, int] = {}
        paused: dict[str, tuple[float | None, float]] = {}
        for r in tx.all(BUSY_OR_PAUSED, (IN_FLIGHT, now)):
            if r["n"] < 0:
                paused[r["action"]] = (r["probe_at"], r["probe_every"] or 60.0)
            else:
                busy[r["action"]] = r["n"]
        room = {a: concurrency.get(a, 1) - busy.get(a, 0) for a in set(concurrency) | set(busy)}
        for action, (probe_at, _) in paused.items():
            due = probe_at is not None and probe_at <= now and not busy.get(action)
            room[action] = 1 if due else 0
        return room, [a for a, n in room.items() if n <= 0], paused

    def _claim_in(self, tx: Tx, owner: str, limit: int, lease_seconds: float,
                  concurrency: dict[str, int]) -> list[Claimed]:
        now = time.time()
        self.lock_claims(tx)
        room, full, paused = self._room(tx, concurrency, now)
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
        if any(row["state"] == IN_FLIGHT for row in rows) and self._reached(tx, lease_seconds):
            rows = [row for row in rows if row["state"] != IN_FLIGHT]  # renewed just now
        for row in rows:
            if len(claimed) >= limit:
                break
            action = row["action"]
            if room.get(action, 1) <= 0:
                continue
            room[action] = room.get(action, 1) - 1
            if row["state"] == IN_FLIGHT:  # its owner died mid-attempt
                lost.append((row["id"], row["attempts"], now, EXPIRED))
            probe = action in paused  # a probe uses up none of the delivery's tries
            claimed.append(Claimed(
                row["id"], row["event_id"], action, row["attempts"] + 1,
                row["tries"] + (0 if probe else 1), row["cycle_started_at"], bytes(row["body"]),
                row["received_at"], bool(row["recovered"]), row["cause"], probe,
                row["state"] == IN_FLIGHT or bool(row["cut_off"])))
        tx.many(LOST, lost)
        # a takeover stays one until an attempt's outcome is recorded (handed back again
        # before its attempt began, it is still one)
        tx.many("UPDATE deliveries SET state = ?, lease_owner = ?, lease_until = ?, "
                "attempts = attempts + 1, tries = tries + ?, updated_at = ?, cut_off = ? "
                "WHERE id = ?",
                [(IN_FLIGHT, owner, now + lease_seconds, 0 if c.probe else 1, now,
                  int(c.taken_over), c.id) for c in claimed])
        probes_taken(tx, claimed, paused, now)
        return claimed

    def extend(self, owner: str, ids: list[str], lease_seconds: float) -> None:
        """Renew the leases ``owner`` holds, and note that a claimer reached the store
        (the lease clock, above): a claimer calls it every lease_seconds / 4, even with
        no lease, so that its silence means it cannot reach the store."""
        with self.tx(durable=False) as tx:
            tx.many("UPDATE deliveries SET lease_until = ? WHERE id = ? AND lease_owner = ? "
                    "AND state = ?",
                    [(time.time() + lease_seconds, i, owner, IN_FLIGHT) for i in ids])
            self.lock_claims(tx)  # after its own rows: a finishing owner holds those first
            self._reached(tx, lease_seconds)

    def _reached(self, tx: Tx, lease_seconds: float) -> bool:
        """Note in the lease clock that a claimer reached the store (under the claim
        lock). If none had for over half a lease, renew every lease for lease_seconds,
        and say so: none may be taken over now."""
        self.lock_claims(tx)
        row = tx.one(SEEN.format(now=self.now_sql))
        silent = row is not None and row["now"] - row["seen_at"] > lease_seconds / 2
        if silent:
            until = time.time() + lease_seconds
            tx.exec(RENEW_ALL.format(skip_locked=self.skip_locked), (until, IN_FLIGHT, until))
        tx.exec(NOTE_SEEN.format(now=self.now_sql))
        return silent

    def finish(self, finished: list[tuple[Claimed, str, Outcome]],
               then_claim: ClaimRequest | None = None,
               pauses: dict[str, PausePolicy] | None = None,
               changes: list[Change] | None = None) -> list[Claimed]:
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
            tx.many(FINISH, [_finished(c, owner, r, now) for c, owner, r in finished
                             if not r.on_failure])
            self._plan_on_failure(tx, [(c, owner, r) for c, owner, r in finished
                                       if r.on_failure], now)
            if pauses is not None:
                rows = self.__dict__.setdefault("_health_rows", set())
                made = note_attempts(tx, finished, pauses, now, rows)
                if changes is not None:
                    changes += made
            if then_claim is None or then_claim.limit <= 0:
                return []
            return self._claim_in(tx, then_claim.owner, then_claim.limit,
                                  then_claim.lease_seconds, then_claim.concurrency)

    def _plan_on_failure(self, tx: Tx, failed: list[tuple[Claimed, str, Outcome]],
                         now: float) -> None:
        """Deliveries that failed for good, with on_failure actions: record each one's end
        and, only if this owner still held it, plan the on_failure actions for its event,
        each carrying the failure (``cause``). These never plan on_failure themselves."""
        for c, owner, r in failed:
            cur = tx.exec(FINISH, _finished(c, owner, r, now))
            if cur.rowcount != 1:
                continue
            cause = json.dumps({"action": c.action, "error": _short(r.error),
                                "attempts": c.attempt, "delivery_id": c.id, "state": r.state})
            tx.many("INSERT INTO deliveries (id, event_id, action, state, cycle_started_at, "
                    "next_attempt_at, updated_at, cause) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(new_id("dlv"), c.event_id, action, PENDING, now, now, now, cause)
                     for action in r.on_failure])

    def release(self, owner: str, ids: list[str] | None = None,
                under_way: Collection[str] = ()) -> int:
        """Give back claimed deliveries (shutdown): pending again, due now. Those in
        ``under_way`` had their attempt begun, its outcome unknown: each is recorded as a
        lost attempt, and its next claim is a takeover, as after a lease that ran out."""
        now = time.time()
        where = "lease_owner = ? AND state = ?"
        params: list[Any] = [owner, IN_FLIGHT]
        if ids is not None:
            if not ids:
                return 0
            where += f" AND id IN ({marks(ids)})"
            params += ids
        with self.tx() as tx:
            for chunk in chunks(list(under_way)):
                held = f"{where} AND id IN ({marks(chunk)})"
                tx.many(LOST, [(r["id"], r["attempts"], now, HANDED_BACK) for r in tx.all(
                    f"SELECT id, attempts FROM deliveries WHERE {held}", (*params, *chunk))])
                tx.exec(f"UPDATE deliveries SET cut_off = 1 WHERE {held}", (*params, *chunk))
            cur = tx.exec(f"UPDATE deliveries SET state = ?, lease_owner = NULL, "
                          f"lease_until = NULL, next_attempt_at = ?, updated_at = ? WHERE {where}",
                          (PENDING, now, now, *params))
            return cur.rowcount
