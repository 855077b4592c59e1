"""What the relay keeps, and the interface every store backend implements.

An event is one accepted notification; planned at receipt, each (event, action) pair is a
delivery; each try of a delivery is an attempt. Deliveries move

    pending -> in_flight -> done
                  |  ^ \\-> failed          (permanent, or out of retries; replay re-opens)
                  v  |  \\-> unknown         (the target may have acted; an operator settles
               pending (retry later)     it: done, or pending again)
    in_flight with an expired lease is claimable again (the attempt taken over is marked so)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from suki_relay.store.rows import (
    ActionState,
    Activity,
    AuditRow,
    ConfigVersionRow,
    DeliveryRow,
    EventDetail,
    EventRow,
    RecoverySessionRow,
    RejectionRow,
    Stats,
)

if TYPE_CHECKING:
    from suki_relay.store.health import Change, PausePolicy
    from suki_relay.store.refusals import Rejection
    from suki_relay.store.sessions import Listed

PENDING, IN_FLIGHT, DONE, FAILED = "pending", "in_flight", "done", "failed"
UNKNOWN = "unknown"  # the outcome of a write is unknown: neither retried nor failed

def new_id(prefix: str) -> str:
    """Time-ordered, unique across nodes (40 random bits per millisecond): sorts newest last.

    Not a secret, so a seeded PRNG does instead of a system call per id: the random
    module's own, which the standard library reseeds in every forked child (workers
    forked from one master never share a sequence).
    """
    return f"{prefix}_{int(time.time() * 1000):012x}{random.getrandbits(40):010x}"


@dataclass
class NewEvent:
    """An accepted request, with its routing plan, ready to commit."""

    dedup_key: str
    body: bytes
    generated_at: int | None
    status: str | None
    session_id: str | None
    encounter_id: str | None
    malformed: bool
    rules: list[str]
    actions: list[str]
    id: str = field(default_factory=lambda: new_id("evt"))
    received_at: float = field(default_factory=time.time)
    recovered: bool = False  # built from Suki's status API, not received (recovery.py)
    config_version: str | None = None  # the config that routed it (config_state.version)


@dataclass(frozen=True)
class Recorded:
    event_id: str
    duplicate: bool
    fallback: bool = False  # the store refused the event as it was; its fallback was recorded


@dataclass(frozen=True)
class Claimed:
    """A delivery claimed for one attempt, with what the action needs."""

    id: str
    event_id: str
    action: str
    attempt: int
    tries: int
    cycle_started_at: float
    body: bytes
    received_at: float
    recovered: bool = False
    cause: str | None = None  # JSON: the failed delivery an on_failure delivery reports
    probe: bool = False  # the one attempt of a paused action (store/health.py): uses no try
    # its previous attempt's outcome is unknown: its owner died mid-attempt (the lease ran
    # out) or stopped and handed it back while the attempt was under way
    taken_over: bool = False


@dataclass(frozen=True)
class ClaimRequest:
    """Who claims, how many, for how long, within which per-action limits."""

    owner: str
    limit: int
    lease_seconds: float
    concurrency: dict[str, int]


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt."""

    outcome: str  # ok, retry, failed, unknown
    started_at: float
    duration: float
    state: str
    next_attempt_at: float | None = None
    http_status: int | None = None
    error: str | None = None
    note: str | None = None
    on_failure: tuple[str, ...] = ()  # actions to plan, in the same transaction, if failed


@dataclass(frozen=True)
class EventFilter:
    status: str | None = None
    session_id: str | None = None
    encounter_id: str | None = None
    since: float | None = None
    until: float | None = None
    matched: bool | None = None
    malformed: bool | None = None
    recovered: bool | None = None
    before: tuple[float, str] | None = None  # (received_at, id) of the last row of a page
    limit: int = 50


class Receiving(Protocol):
    """What the request path calls (receive/: app, record, drain, rejections)."""

    url: str
    gather_seconds: float  # how long a group commit waits for more (store/tx.py)
    batches_at_once: int  # a group commit's batches under way at once (store/tx.py)

    def record(self, events: list[NewEvent]) -> list[Recorded]:
        """Commit events and their deliveries atomically; duplicates are found, not added."""

    def record_each(self, events: list[NewEvent], fallback: Callable[[NewEvent], NewEvent]
                    ) -> list[Recorded | Exception]:
        """Record each event on its own (after a batch that failed): one refused as it is
        is recorded as ``fallback(event)`` (``Recorded.fallback``), else its error is its
        result."""

    def known(self, event_ids: list[str]) -> set[str]:
        """Which of these event ids are committed (a spooled event moved before a crash)."""

    def bounded(self, seconds: float) -> AbstractContextManager[None]:
        """Transactions this thread begins inside take at most ``seconds`` once they have a
        connection, or raise StoreUnavailable (PostgreSQL; SQLite bounds its waits itself)."""

    def exclusive(self) -> AbstractContextManager[None]:
        """Held by group commit around gathering and committing a batch (may be a no-op)."""

    def ping(self) -> None:
        """Raise StoreUnavailable unless the store can commit now (readiness)."""

    def add_rejections(self, rows: list[Rejection], keep: int = ...) -> None:
        """Record refused requests (receive/rejections.py), keeping the newest ``keep``."""

    def remember_config(self, version: str, file: str) -> None:
        """Record that this config version is in use (first time only): the audit trail."""

    def close(self) -> None:
        """Close every connection this process opened (not those of a parent process)."""


class Delivering(Protocol):
    """What the delivery path calls (deliver/deliverer.py, store/retention.py)."""

    url: str

    def claim(self, owner: str, limit: int, lease_seconds: float,
              concurrency: dict[str, int]) -> tuple[list[Claimed], frozenset[str]]:
        """Lease up to ``limit`` due deliveries; also says which actions were at their
        max_concurrency when it looked."""

    def extend(self, owner: str, ids: list[str], lease_seconds: float) -> None:
        """Renew the leases ``owner`` still holds, and note that a claimer reached the
        store: every claimer calls it every lease_seconds / 4, even with no lease."""

    def finish(self, finished: list[tuple[Claimed, str, Outcome]],
               then_claim: ClaimRequest | None = None,
               pauses: dict[str, PausePolicy] | None = None,
               changes: list[Change] | None = None) -> list[Claimed]:
        """Record attempts (claimed, owner, outcome) and claim the next, in one transaction.
        With ``pauses``, count each action's failures in a row and pause or resume it
        (store/health.py), appending each change made to ``changes``."""

    def release(self, owner: str, ids: list[str] | None = None,
                under_way: Collection[str] = ()) -> int:
        """Give back claimed deliveries (shutdown): pending again, due now; those
        ``under_way`` (their attempt begun, its outcome unknown) are taken over by their
        next claim (Claimed.taken_over), as after a lease that ran out."""

    def exclusive(self) -> AbstractContextManager[None]:
        """Held by group commit around gathering and committing a batch (may be a no-op)."""

    def prune(self, before: float) -> int:
        """Delete events received before ``before`` whose deliveries are all finished."""

    def prune_recovery(self, before: float) -> int:
        """Forget recovery's sessions last seen before ``before``."""

    def close(self) -> None:
        """Close every connection this process opened (not those of a parent process)."""


class Administering(Protocol):
    """What inspection and repair call (cli/, console/, recover/repair.py, metrics, check)."""

    url: str

    def events(self, f: EventFilter) -> list[EventRow]:
        """Events newest first, each with its deliveries counted by state."""

    def event(self, event_id: str) -> EventDetail | None:
        """One event with its body, its deliveries and every attempt."""

    def count_events(self, since: float) -> int:
        """How many events were received since ``since``."""

    def deliveries(self, state: str | None = None, action: str | None = None,
                   event_id: str | None = None, since: float | None = None,
                   limit: int = 100, until: float | None = None,
                   delivery_id: str | None = None) -> list[DeliveryRow]:
        """Deliveries (changed within since..until), most recently changed first."""

    def delivery_states(self) -> dict[str, int]:
        """Deliveries by state, every state the store holds."""

    def activity(self, since: float, limit: int = 200_000) -> Activity:
        """The times the console's charts draw (accepted, delivered, failed, refused)."""

    def reopen(self, delivery_ids: list[str]) -> int:
        """Replay: due now, with a fresh retry budget."""

    def resolve(self, delivery_id: str, filed: str | None, by: str = "operator") -> str | None:
        """Settle an ``unknown`` delivery: done (filed) or pending again; the new state."""

    def add_deliveries(self, event_id: str, rules: list[str], actions: list[str]) -> list[str]:
        """Reroute: plan deliveries for actions the event does not have yet."""

    def prune(self, before: float) -> int:
        """Delete events received before ``before`` whose deliveries are all finished."""

    def stats(self) -> Stats:
        """Deliveries by state, events stored and the oldest unfinished delivery's age."""

    def recovery_counts(self) -> dict[str, int]:
        """Sessions known to recovery, by state."""

    def recovery_sessions(self, state: str | None = None,
                          limit: int = 100) -> list[RecoverySessionRow]:
        """Sessions known to recovery, newest first."""

    def rejections(self, since: float | None = None, reason: str | None = None,
                   limit: int = 100) -> list[RejectionRow]:
        """Recent refused requests, newest first (receive/rejections.py)."""

    def config_versions(self) -> list[ConfigVersionRow]:
        """Every config version used, oldest first."""

    def sign_out(self, session: str, expires_at: float) -> None:
        """End a console session on every node: kept until it would have expired."""

    def signed_out(self, session: str) -> bool:
        """Whether this console session was signed out."""

    def sign_in_wait(self, keys: list[str]) -> float:
        """Seconds before any of these console sign-in keys may try again (0: now)."""

    def sign_in_failed(self, keys: list[str], free: int, longest: float) -> None:
        """Count a failed sign-in for each key, for every worker and node: after ``free``
        failures in a row a key is refused for 1, 2, 4 ... seconds, at most ``longest``."""

    def sign_in_succeeded(self, keys: list[str]) -> None:
        """A sign-in succeeded: forget these keys' failures."""

    def statuses(self, since: float) -> set[str]:
        """The distinct statuses of well-formed events received since then (for `check`)."""

    def add_audit(self, user: str, role: str, action: str, target: str | None = None,
                  detail: str | None = None, client: str | None = None) -> None:
        """Record one console action in the audit trail (store/audit.py)."""

    def audit_log(self, limit: int = 200, user: str | None = None) -> list[AuditRow]:
        """The console's audit trail, newest first."""

    def pause(self, action: str) -> bool:
        """Pause an action by hand (its deliveries wait; no probes)."""

    def resume(self, action: str) -> bool:
        """Resume a paused action; its waiting deliveries are due now."""

    def action_states(self) -> list[ActionState]:
        """Each action's state (active, paused), failures in a row, queue and last results."""

    def close(self) -> None:
        """Close every connection this process opened (not those of a parent process)."""


class Recovering(Protocol):
    """What recovery calls (recover/recovery.py: the gap watcher and the recoverer)."""

    url: str

    def event_for_session(self, session_id: str) -> str | None:
        """The id of an event already recorded for this session (received or recovered)."""

    def record_recovered(self, event: NewEvent) -> Recorded:
        """Record a recovered event unless its session has an event by now."""

    def success_events_since(self, since: float, limit: int) -> list[dict[str, Any]]:
        """Success events received at or after ``since`` (ids and times only), oldest first."""

    def event_bodies(self, ids: Sequence[str]) -> dict[str, tuple[bytes, float]]:
        """Bodies and receipt times by event id."""

    def recent_success_bodies(self, since: float, limit: int) -> list[tuple[str, bytes, float]]:
        """Success events' (id, body, received_at), newest first."""

    def scan_cursor(self) -> float | None:
        """Where the gap watcher's scan of success events stopped."""

    def note_listed(self, listed: list[Listed], grace_seconds: float,
                    cursor: float | None = None) -> int:
        """Note sessions named by success events (to check after ``grace_seconds``)."""

    def claim_checks(self, owner: str, limit: int, lease_seconds: float) -> list[dict[str, Any]]:
        """Lease sessions due for a check with Suki's API."""

    def finish_check(self, session_id: str, owner: str, state: str, *,
                     next_check_at: float | None = None, last_status: str | None = None,
                     event_id: str | None = None) -> bool:
        """Record the outcome of one session's check."""

    def listed_encounter(self, session_id: str) -> str | None:
        """The encounter a success event named for this session, if any."""

    def recovery_counts(self) -> dict[str, int]:
        """Sessions known to recovery, by state."""

    def prune_recovery(self, before: float) -> int:
        """Forget recovery's sessions last seen before ``before``."""

    def close(self) -> None:
        """Close every connection this process opened (not those of a parent process)."""


class Store(Receiving, Delivering, Administering, Recovering, Protocol):
    """Every consumer's protocol at once: what open_store() returns, and what the SQL
    store (store/sql.py, over SQLite or PostgreSQL) implements. Each consumer takes only
    its own protocol, so it cannot call a method that protocol does not declare."""
