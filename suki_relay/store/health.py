"""The ledger's part for sick targets: each action's consecutive failed attempts, and
whether it is paused (table ``action_health``).

Kept in the store, in the transactions that already run, so every worker and node sees
one state: finish() counts each attempt's outcome (one upsert per action in the batch)
and pauses the action when ``pause_after`` failed in a row; a claim leaves a paused
action's deliveries alone except for one probe every ``probe_every_seconds`` (its
failure uses up none of the delivery's attempts); the probe's success resumes it. A pause
by hand (`suki-relay pause`) sends no probes; only a resume by hand ends it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from suki_relay.store.base import PENDING, Claimed, Outcome, new_id
from suki_relay.store.rows import ActionState
from suki_relay.store.tx import Backend, Tx

ACTIVE, PAUSED = "active", "paused"
ERROR_MAX = 500


@dataclass(frozen=True)
class PausePolicy:
    """An action's rule for pausing, from its config."""

    pause_after: int = 10  # consecutive failed attempts; 0: never pause
    probe_every_seconds: float = 60.0
    on_pause: tuple[str, ...] = ()  # actions planned once per change, for the event at hand


@dataclass(frozen=True)
class Change:
    """An action paused or resumed by an attempt's outcome (reported once, by the
    transaction that made the change)."""

    action: str
    state: str  # paused or active
    failures: int
    event_id: str
    delivery_id: str
    error: str | None


_FAILED_UPSERT = """
INSERT INTO action_health (action, state, failures, last_error, last_error_at, changed_at,
                           by_hand)
VALUES (?, 'active', ?, ?, ?, ?, 0)
ON CONFLICT (action) DO UPDATE SET
    failures = action_health.failures + excluded.failures,
    last_error = excluded.last_error, last_error_at = excluded.last_error_at,
    state = CASE WHEN {pause} THEN 'paused' ELSE action_health.state END,
    paused_at = CASE WHEN {pause} THEN excluded.changed_at ELSE action_health.paused_at END,
    probe_at = CASE WHEN {pause} THEN ? ELSE action_health.probe_at END,
    probe_every = CASE WHEN {pause} THEN ? ELSE action_health.probe_every END,
    changed_at = CASE WHEN {pause} THEN excluded.changed_at ELSE action_health.changed_at END
RETURNING state, failures, changed_at
"""
_PAUSE_NOW = ("(action_health.state = 'active' AND ? > 0 AND "
              "action_health.failures + excluded.failures >= ?)")
FAILED_UPSERT = _FAILED_UPSERT.format(pause=_PAUSE_NOW)
# a success writes only when it changes something: a count to clear, a pause to end, or
# a last success older than SUCCESS_EVERY (on the hot path, a look without a write)
SUCCEEDED = """
UPDATE action_health SET
    failures = 0, last_success_at = ?,
    state = CASE WHEN by_hand = 1 THEN state ELSE 'active' END,
    changed_at = CASE WHEN state = 'paused' AND by_hand = 0 THEN ? ELSE changed_at END
WHERE action = ? AND (failures <> 0 OR (state = 'paused' AND by_hand = 0)
                      OR last_success_at IS NULL OR last_success_at < ?)
RETURNING state, changed_at, paused_at
"""
SUCCESS_EVERY = 1.0  # seconds: how stale `suki-relay actions`' last success may be
NEW_ROW = ("INSERT INTO action_health (action, state, failures, by_hand) "
           "VALUES (?, 'active', 0, 0) ON CONFLICT (action) DO NOTHING")



def probes_taken(tx: Tx, claimed: list[Claimed], paused: dict[str, tuple[float | None, float]],
                 now: float) -> None:
    """The next probe of each paused action that just got one is due probe_every later."""
    tx.many("UPDATE action_health SET probe_at = ? WHERE action = ?",
            [(now + paused[c.action][1], c.action) for c in claimed if c.probe])


def shift_waiting(tx: Tx, action: str, paused_at: float | None, now: float) -> None:
    """On resume: the action's waiting deliveries are due now, and the pause does not count
    towards their max_age_seconds."""
    shift = max(0.0, now - paused_at) if paused_at else 0.0
    tx.exec("UPDATE deliveries SET next_attempt_at = ?, cycle_started_at = cycle_started_at + ?, "
            "updated_at = ? WHERE action = ? AND state = ?", (now, shift, now, action, PENDING))


def note_attempts(tx: Tx, finished: list[tuple[Claimed, str, Outcome]],
                  policies: dict[str, PausePolicy], now: float,
                  have_rows: set[str] | None = None) -> list[Change]:
    """Count this batch's outcomes per action (in order: a success clears the count) and
    pause or resume; plan each change's on_pause actions. The changes made.
    ``have_rows``: the actions this store has seen a row of (kept by the caller)."""
    have_rows = set() if have_rows is None else have_rows
    runs: dict[str, list[tuple[Claimed, Outcome]]] = {}
    for c, _, r in finished:
        if r.outcome != "lost":
            runs.setdefault(c.action, []).append((c, r))
    changes: list[Change] = []
    for action, results in runs.items():
        policy = policies.get(action, PausePolicy(0))
        last_ok = max((i for i, (_, r) in enumerate(results) if r.outcome == "ok"), default=None)
        if last_ok is not None:
            c, _ = results[last_ok]
            if action not in have_rows:
                tx.exec(NEW_ROW, (action,))
                have_rows.add(action)
            row = tx.one(SUCCEEDED, (now, now, action, now - SUCCESS_EVERY))
            if row and row["state"] == "active" and row["changed_at"] == now:
                shift_waiting(tx, action, row["paused_at"], now)
                changes.append(Change(action, ACTIVE, 0, c.event_id, c.id, None))
        failed = results[last_ok + 1:] if last_ok is not None else results
        if not failed:
            continue
        c, r = failed[-1]
        error = (r.error or r.outcome)[:ERROR_MAX]
        when = (policy.pause_after, policy.pause_after)  # the parameters of _PAUSE_NOW
        row = tx.one(FAILED_UPSERT, (action, len(failed), error, now, now, *when, *when,
                                     *when, now + policy.probe_every_seconds,
                                     *when, policy.probe_every_seconds, *when))
        if row and row["state"] == "paused" and row["changed_at"] == now:
            changes.append(Change(action, PAUSED, row["failures"], c.event_id, c.id, error))
    for change in changes:
        _plan_on_pause(tx, change, policies.get(change.action, PausePolicy(0)), now)
    return changes


def _plan_on_pause(tx: Tx, change: Change, policy: PausePolicy, now: float) -> None:
    actions = [a for a in policy.on_pause if a != change.action]
    if not actions:
        return
    if change.state == PAUSED:
        error = (f"paused after {change.failures} failed attempts in a row: "
                 f"{change.error or '-'}")[:ERROR_MAX]
    else:
        error = "resumed: a probe delivery succeeded"
    cause = json.dumps({"action": change.action, "error": error, "attempts": change.failures,
                        "delivery_id": change.delivery_id,
                        "paused": change.state == PAUSED})
    tx.many("INSERT INTO deliveries (id, event_id, action, state, cycle_started_at, "
            "next_attempt_at, updated_at, cause) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(new_id("dlv"), change.event_id, a, PENDING, now, now, now, cause)
             for a in actions])


class HealthLedger(Backend):
    """Part of SqlStore: pausing and resuming by hand, and each action's state."""

    def pause(self, action: str) -> bool:
        """Pause by hand (no probes). False if it was paused by hand already."""
        now = time.time()
        with self.tx() as tx:
            row = tx.one("INSERT INTO action_health (action, state, failures, paused_at, "
                         "changed_at, by_hand) VALUES (?, 'paused', 0, ?, ?, 1) "
                         "ON CONFLICT (action) DO UPDATE SET state = 'paused', by_hand = 1, "
                         "probe_at = NULL, "
                         "paused_at = CASE WHEN action_health.state = 'paused' "
                         "THEN action_health.paused_at ELSE excluded.paused_at END, "
                         "changed_at = CASE WHEN action_health.by_hand = 1 "
                         "THEN action_health.changed_at ELSE excluded.changed_at END "
                         "RETURNING changed_at", (action, now, now))
        return bool(row and row["changed_at"] == now)

    def resume(self, action: str) -> bool:
        """Resume now, by hand; its waiting deliveries are due. False if it was not paused."""
        now = time.time()
        with self.tx() as tx:
            row = tx.one("SELECT paused_at FROM action_health WHERE action = ? "
                         "AND state = 'paused'", (action,))
            if row is None:
                return False
            tx.exec("UPDATE action_health SET state = 'active', by_hand = 0, failures = 0, "
                    "probe_at = NULL, changed_at = ? WHERE action = ?", (now, action))
            shift_waiting(tx, action, row["paused_at"], now)
        return True

    def action_states(self) -> list[ActionState]:
        """Every action the store has seen an attempt of (or a pause), with its queue."""
        with self.tx(write=False) as tx:
            rows = {r["action"]: r for r in tx.all(
                "SELECT action, state, failures, paused_at, probe_at, by_hand, "
                "last_success_at, last_error, last_error_at FROM action_health")}
            queued = {r["action"]: r["n"] for r in tx.all(
                "SELECT action, count(*) AS n FROM deliveries WHERE state IN (?, 'in_flight') "
                "GROUP BY action", (PENDING,))}
        out = []
        for action in sorted(set(rows) | set(queued)):
            r: dict[str, Any] = rows.get(action) or {}
            out.append(ActionState(action, r.get("state") or ACTIVE, r.get("failures") or 0,
                                   queued.get(action, 0), r.get("paused_at"),
                                   r.get("probe_at"), bool(r.get("by_hand")),
                                   r.get("last_success_at"), r.get("last_error"),
                                   r.get("last_error_at")))
        return out
