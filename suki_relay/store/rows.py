"""What the admin reads return: typed rows, one class per thing an operator looks at.

The fields are named and ordered as the CLI's --json output shows them, so
``dataclasses.asdict`` of a row is that output (the CLI adds only display columns).
``parse_since`` reads the time bound a reader is given (`2h`, ISO 8601).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from suki_relay.errors import RelayError


@dataclass(frozen=True)
class AttemptRow:
    """One try of a delivery (``outcome``: ok, retry, failed, or lost when its worker died)."""

    delivery_id: str
    attempt: int
    started_at: float
    duration: float
    outcome: str
    http_status: int | None
    error: str | None
    note: str | None


@dataclass(frozen=True)
class DeliveryRow:
    """One (event, action) pair and where it stands."""

    id: str
    event_id: str
    action: str
    state: str
    attempts: int
    tries: int
    cycle_started_at: float
    next_attempt_at: float
    lease_owner: str | None
    lease_until: float | None
    last_error: str | None
    last_status: int | None
    updated_at: float
    cause: str | None = None  # an on_failure delivery: JSON of the failure it reports


@dataclass(frozen=True)
class DeliveryListRow(DeliveryRow):
    """A delivery listed across events, with what identifies its event to an operator."""

    event_status: str | None = None
    session_id: str | None = None


@dataclass(frozen=True)
class EventRow:
    """One accepted notification (never its body: see EventDetail)."""

    id: str
    received_at: float
    generated_at: int | None
    status: str | None
    session_id: str | None
    encounter_id: str | None
    malformed: bool
    matched: bool
    rules: list[str]
    recovered: bool = False  # recorded from Suki's status API, not received
    config_version: str | None = None  # the config that routed it (None: before versions)
    deliveries: dict[str, int] = field(default_factory=dict)  # count by state
    actions: list[str] = field(default_factory=list)  # of its deliveries (in listings)


@dataclass(frozen=True)
class DeliveryDetail:
    delivery: DeliveryRow
    attempts: list[AttemptRow]


@dataclass(frozen=True)
class EventDetail:
    """One event with its body (PHI: shown only on request) and every delivery's attempts."""

    event: EventRow
    body: bytes
    deliveries: list[DeliveryDetail]


@dataclass(frozen=True)
class Activity:
    """Times for the console's charts (store/admin.py activity())."""

    accepted: list[float]  # events' received_at
    done: list[tuple[float, float]]  # (delivered at, its event received at)
    failed: list[float]  # deliveries failed for good, when
    refused: list[tuple[float, int]]  # (last seen, how many) of refused requests


@dataclass(frozen=True)
class AuditRow:
    """One console action: who, with which role, what, on what (an event, an action)."""

    id: str
    at: float
    user_name: str
    role: str
    action: str  # sign in, show payload, replay, reroute, resume, refused: ...
    target: str | None  # an event id, a delivery id, an action name
    detail: str | None
    client: str | None


@dataclass(frozen=True)
class ActionState:
    """An action as the store knows it: paused or not, and its queue (store/health.py)."""

    action: str
    state: str  # active or paused
    failures: int  # failed attempts in a row
    queued: int  # deliveries pending or in flight
    paused_at: float | None
    probe_at: float | None  # the next probe, while paused (None: paused by hand)
    by_hand: bool
    last_success_at: float | None
    last_error: str | None
    last_error_at: float | None


@dataclass(frozen=True)
class RejectionRow:
    """Refused requests alike (same reason, same address) within one second; no body."""

    id: str
    first_at: float
    last_at: float
    reason: str
    http_status: int | None
    skew_ms: int | None  # this node's clock minus generated-at
    remote_addr: str | None
    count: int


@dataclass(frozen=True)
class RecoverySessionRow:
    """A session a success event listed, as recovery tracks it (store/recovery.py)."""

    session_id: str
    encounter_id: str | None
    listed_by: str | None
    first_seen: float
    next_check_at: float
    state: str  # waiting, present, recovered, given_up
    checks: int
    last_status: str | None
    event_id: str | None
    lease_owner: str | None
    lease_until: float | None
    updated_at: float


@dataclass(frozen=True)
class ConfigVersionRow:
    """A config version (the start of its SHA-256) and where and when it was first used."""

    version: str
    first_used_at: float
    file: str
    host: str


@dataclass(frozen=True)
class Stats:
    events: int
    deliveries: dict[str, int]  # every state, zero included
    oldest_pending_age_seconds: float


def parse_since(value: str | None) -> float | None:
    """`30m`, `2h`, `7d` ago, or an ISO 8601 time."""
    if value is None:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return time.time() - float(m.group(1)) * unit
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise RelayError(f"cannot read time {value!r}: use 30m, 2h, 7d or ISO 8601") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
