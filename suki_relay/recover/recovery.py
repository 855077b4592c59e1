"""Recovering what Suki sent while nobody listened.

Suki never retries a notification. Its status API can still tell what became of any
session, so a session the relay has no event for can be asked after, and recorded as if
Suki had notified us (an event marked ``recovered``, routed like any other):

=====================================  ===================================================
Suki's API says                        what is recorded (payload ``status``)
=====================================  ===================================================
``completed``                          ``success``, with ``_links`` (as Suki notifies)
``failed``                             ``failure`` (no ``error_code``: the API gives none)
``aborted`` / ``skipped``              ``aborted`` / ``skipped`` (Suki's own words)
``created ready running paused``       nothing: reported as unfinished
404                                    nothing: reported as unknown to Suki
=====================================  ===================================================

Every recovered payload also carries ``session_status``, the API's word, so rules can
tell a recovered event (``session_status: {exists: true}``) from a received one.

Two ways in: ``suki-relay recover SESSION_ID...`` (:meth:`Recoverer.recover`), and the
:class:`GapWatcher`, which notes the sessions a success event lists in ``sessions``, and
checks each one that still has no event of its own ``grace_seconds`` later, then every
``check_every_seconds`` while unfinished, until ``give_up_after_hours``. Checks are leased
in the store, so nodes sharing PostgreSQL never check one session at the same time; a
recovered event's dedup key is ``recovered:<session id>``, so it is recorded once whatever
races.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from suki_relay import logs, metrics
from suki_relay.config.routing import route
from suki_relay.deliver.suki_api import SESSION_ID, SukiClient, session_path
from suki_relay.errors import DeliveryError, PermanentError
from suki_relay.protocol import FAILURE, SUCCESS, UNFINISHED_SESSION_STATUSES
from suki_relay.store import NewEvent, Recovering
from suki_relay.store.sessions import GIVEN_UP, PRESENT, RECOVERED, WAITING, Listed

if TYPE_CHECKING:
    from suki_relay.config.load import Config
    from suki_relay.deliver.deliverer import Deliverer
    from suki_relay.store.spool import Spool

log = logging.getLogger("suki_relay.recover.recovery")

# a finished session's status -> the status its recovered event is recorded with
RECORDED_AS = {"completed": SUCCESS, "failed": FAILURE, "aborted": "aborted",
               "skipped": "skipped"}

# relation -> (API path under the session, link name); structured data has no path of its
# own in Suki's documentation: it comes with the content (`structured_data` in its answer)
LINKS = {
    "contents": ("content", "content"),
    "encounter_content": ("content?cumulative=true", "encounter_content"),
    "structured_data": ("content", "structured_data"),
    "encounter_structured_data": ("content?cumulative=true", "encounter_structured_data"),
    "status": ("status", "status"),
    "transcripts": ("transcript", "transcripts"),
}
MAX_LISTED = 200  # sessions taken from one event's `sessions` (it is signed, but bounded)
SCAN_MARGIN = 300.0  # seconds re-read behind the scan cursor (clock and commit-order slack)
SCAN_BATCH = 1000
LOOKUP_EVENTS = 5000  # success events read, newest first, to find a session's encounter
LOOKUP_DAYS = 7.0
CHECKS_PER_TICK = 50
PRUNE_EVERY = 3600.0


def links(session_id: str) -> dict[str, list[dict[str, str]]]:
    """``_links`` as Suki's success notification has them, for one session."""
    return {rel: [{"href": session_path(session_id, tail), "method": "GET", "name": name,
                   "type": "application/json"}] for rel, (tail, name) in LINKS.items()}


def recovered_payload(session_id: str, encounter_id: str | None,
                      api_status: str) -> dict[str, Any]:
    payload: dict[str, Any] = {"status": RECORDED_AS[api_status], "session_id": session_id}
    if encounter_id:
        payload["encounter_id"] = encounter_id
    if api_status == "completed":
        payload["_links"] = links(session_id)
    payload["session_status"] = api_status
    return payload


def listed_sessions(event_id: str, body: bytes, received_at: float) -> list[Listed]:
    """The other sessions a success event names in ``sessions``."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(payload, dict) or not isinstance(payload.get("sessions"), list):
        return []
    own = payload.get("session_id")
    encounter = payload.get("encounter_id")
    encounter = str(encounter)[:200] if isinstance(encounter, str | int) else None
    seen: dict[str, Listed] = {}
    for sid in payload["sessions"][:MAX_LISTED]:
        if isinstance(sid, str) and sid != own and SESSION_ID.fullmatch(sid):
            seen.setdefault(sid, Listed(sid, encounter, event_id, received_at))
    return list(seen.values())


def safe_status(status: str) -> str:
    """The API's word if it is one we know; anything else is shown as `unrecognised`."""
    return status if status in UNFINISHED_SESSION_STATUSES or status in RECORDED_AS else "unrecognised"


@dataclass
class Result:
    """What was done for one session: one line of `recover`'s output."""

    session_id: str
    outcome: str  # recovered, would_recover, present, unfinished, unknown, error, invalid
    api_status: str | None = None
    event_id: str | None = None
    encounter_id: str | None = None
    recorded_status: str | None = None
    actions: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def asked_suki(self) -> bool:
        return self.outcome != "error"

    def line(self, width: int = 0) -> str:
        """One row of `recover`'s output, the session id padded to ``width``."""
        return f"{self.session_id:<{width}}  {self.outcome:<{OUTCOME_WIDTH}}  {self.detail}".rstrip()


OUTCOMES = ("recovered", "would_recover", "present", "unfinished", "unknown", "error", "invalid")
OUTCOME_WIDTH = max(map(len, OUTCOMES))


def header(width: int) -> str:
    """The heading of `recover`'s rows (Result.line)."""
    return f"{'SESSION':<{width}}  {'OUTCOME':<{OUTCOME_WIDTH}}  DETAIL"


def a_or_an(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


class Recoverer:
    """Asks Suki about sessions and records what it learns. One per process and config."""

    def __init__(self, config: Config, store: Recovering, client: SukiClient | None = None,
                 deliverer: Deliverer | None = None, announce: bool = True):
        """``announce``: log each recovery at WARNING (False where the caller prints the
        results, as `suki-relay recover` does)."""
        if client is None and config.suki is None:
            raise ValueError("recovery needs the suki: section")
        self.config = config
        self.store = store
        self.client = client or SukiClient(config.suki)  # type: ignore[arg-type]
        self.deliverer = deliverer
        self.announce = announce
        self.count_event = metrics.event_counter(config.rules)

    def encounter_of(self, session_id: str) -> str | None:
        """The encounter another event's ``sessions`` tied this session to, if any."""
        known = self.store.listed_encounter(session_id)
        if known:
            return known
        since = time.time() - LOOKUP_DAYS * 86400
        for event_id, body, at in self.store.recent_success_bodies(since, LOOKUP_EVENTS):
            for listed in listed_sessions(event_id, body, at):
                if listed.session_id == session_id and listed.encounter_id:
                    return listed.encounter_id
        return None

    def recover(self, session_id: str, encounter_id: str | None = None,
                dry_run: bool = False) -> Result:
        if not SESSION_ID.fullmatch(session_id):
            return Result(session_id[:80], "invalid", detail="not a session id; not asked")
        existing = self.store.event_for_session(session_id)
        if existing:
            return Result(session_id, "present", event_id=existing,
                          detail=f"already has event {existing}; left alone")
        try:
            status = self.client.session_status(session_id)
        except (DeliveryError, PermanentError) as exc:
            return Result(session_id, "error", detail=f"Suki could not be asked: {exc}")
        if status is None:
            return Result(session_id, "unknown", detail="Suki does not know this session "
                                                        "(404); nothing recorded")
        shown = safe_status(status)
        if status not in RECORDED_AS:
            what = "unfinished" if status in UNFINISHED_SESSION_STATUSES else "unrecognised status"
            return Result(session_id, "unfinished", shown,
                          detail=f"Suki says {shown} ({what}); nothing recorded")
        encounter = encounter_id or self.encounter_of(session_id)
        payload = recovered_payload(session_id, encounter, status)
        plan = route(self.config.rules, self.config.unmatched, payload)
        result = Result(session_id, "would_recover", status, encounter_id=encounter,
                        recorded_status=payload["status"], actions=list(plan.actions))
        if dry_run:
            result.detail = (f"Suki says {status}; would record {a_or_an(payload['status'])} event, "
                             f"actions: {', '.join(plan.actions) or '(none)'}; dry run, "
                             "nothing recorded")
            return result
        body = json.dumps(payload, separators=(",", ":")).encode()
        event = NewEvent(f"recovered:{session_id}", body, None, payload["status"], session_id,
                         encounter, False, plan.rules, plan.actions, recovered=True)
        recorded = self.store.record_recovered(event)
        if recorded.duplicate:
            return Result(session_id, "present", status, recorded.event_id,
                          detail=f"already has event {recorded.event_id}; left alone")
        result.outcome, result.event_id = "recovered", recorded.event_id
        result.detail = (f"Suki says {status}; recorded {a_or_an(payload['status'])} event "
                         f"{recorded.event_id} (recovered), actions: "
                         f"{', '.join(plan.actions) or '(none)'}")
        metrics.RECOVERED.labels(status).inc()
        self.count_event(payload["status"])
        if self.announce:
            logs.event(log, "session recovered", logging.WARNING, session_id=session_id,
                       event_id=recorded.event_id, session_status=status,
                       deliveries=len(plan.actions))
        if self.deliverer is not None and plan.actions:
            self.deliverer.wake(plan.actions)
        return result


class GapWatcher:
    """Finds sessions that a success event lists but that never got an event, and
    recovers them. One thread per delivering process; the store's leases share the work."""

    def __init__(self, config: Config, store: Recovering, recoverer: Recoverer,
                 owner: str | None = None, spool: Spool | None = None):
        self.config = config
        self.spool = spool  # this node's: while it holds events, they may be the "missing"
        self.settings = config.recovery
        self.store = store
        self.recoverer = recoverer
        self._given_owner = owner
        # named again when started, after the fork that made the process which runs it
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        timeout = config.suki.timeout_seconds if config.suki else 20.0
        self.lease_seconds = 60.0 + 4 * timeout  # a login and a status call, with room
        self._seen: dict[str, float] = {}  # event ids scanned within the margin
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ one pass

    def scan(self) -> int:
        """Note the sessions listed by success events received since the last scan."""
        horizon = time.time() - self.settings.give_up_after_hours * 3600
        cursor = self.store.scan_cursor()
        since = horizon if cursor is None else max(horizon, cursor - SCAN_MARGIN)
        self._seen = {k: v for k, v in self._seen.items() if v >= since}
        added = 0
        while True:
            rows = self.store.success_events_since(since, SCAN_BATCH)  # oldest first
            if not rows:
                return added
            fresh = [r["id"] for r in rows if r["id"] not in self._seen]
            listed: list[Listed] = []
            for event_id, (body, at) in self.store.event_bodies(fresh).items():
                listed += listed_sessions(event_id, body, at)
            newest = rows[-1]["received_at"]
            if listed or cursor is None or newest > cursor:  # else: nothing to write
                added += self.store.note_listed(listed, self.settings.grace_seconds, newest)
                cursor = newest if cursor is None else max(cursor, newest)
            self._seen.update((r["id"], r["received_at"]) for r in rows)
            if len(rows) < SCAN_BATCH or newest <= since:
                return added
            since = newest

    def check_due(self) -> list[Result]:
        """Check the sessions due now, one lease at a time; none while this node's spool
        holds events not yet moved into the store (a session's own notification may be
        among them: recovering it first would record the session twice)."""
        results: list[Result] = []
        if self.spool is not None and self.spool.has_waiting():
            return results
        for _ in range(CHECKS_PER_TICK):
            if self._stopping.is_set():
                break
            rows = self.store.claim_checks(self.owner, 1, self.lease_seconds)
            if not rows:
                break
            results.append(self._check(rows[0]))
        return results

    def _check(self, row: dict[str, Any]) -> Result:
        sid = row["session_id"]
        result = self.recoverer.recover(sid, encounter_id=row["encounter_id"])
        now = time.time()
        if result.outcome == "present":
            self.store.finish_check(sid, self.owner, PRESENT, last_status=result.api_status,
                                    event_id=result.event_id)
        elif result.outcome == "recovered":
            self.store.finish_check(sid, self.owner, RECOVERED, last_status=result.api_status,
                                    event_id=result.event_id)
        elif (now - row["first_seen"] >= self.settings.give_up_after_hours * 3600
              or result.outcome == "invalid"):
            self.store.finish_check(sid, self.owner, GIVEN_UP, last_status=result.api_status
                                    or result.outcome)
            metrics.GIVE_UPS.inc()
            logs.event(log, "gave up on a missing session", logging.ERROR, session_id=sid,
                       outcome=result.outcome, session_status=result.api_status,
                       checks=row["checks"] + 1)
        else:
            self.store.finish_check(sid, self.owner, WAITING,
                                    next_check_at=now + self.settings.check_every_seconds,
                                    last_status=result.api_status or result.outcome)
            logs.event(log, "missing session not recovered yet", logging.INFO,
                       session_id=sid, outcome=result.outcome,
                       session_status=result.api_status, checks=row["checks"] + 1)
        return result

    def run_once(self) -> list[Result]:
        self.scan()
        return self.check_due()

    # ------------------------------------------------------------ the thread

    @property
    def tick(self) -> float:
        s = self.settings
        return max(0.2, min(10.0, min(s.grace_seconds, s.check_every_seconds) / 4))

    def start(self) -> None:
        """Started (and stopped) by the process's lifecycle (serve/process.py)."""
        self.owner = self._given_owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="suki-recovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _loop(self) -> None:
        next_prune = time.monotonic() + PRUNE_EVERY
        while not self._stopping.wait(self.tick):
            try:
                self.run_once()
                if time.monotonic() >= next_prune:
                    keep = max(7 * 86400, 2 * self.settings.give_up_after_hours * 3600)
                    self.store.prune_recovery(time.time() - keep)
                    next_prune = time.monotonic() + PRUNE_EVERY
            except Exception as exc:  # the store is down, or a bug: try again next tick
                logs.event(log, "recovery pass failed", logging.WARNING,
                           error_class=type(exc).__name__)
