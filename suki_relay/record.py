"""Recording: turn a verified body into an event with its plan, and commit it.

Routing happens here, at receipt, so the deliveries are committed in the same transaction
as the event. Concurrent requests in one process share a transaction (group commit): the
first to arrive commits everything queued behind it, and each request waits for the
commit that holds its own event before it is answered.
"""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

from .config import Config
from .routing import route
from .store import NewEvent, Recorded, Store
from .verify import Verified

MAX_BATCH = 128


def to_event(body: bytes, verified: Verified, config: Config) -> NewEvent:
    """Parse and route; a body that is not a JSON object with a string status is malformed."""
    payload: Any = None
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        payload = json.loads(body)
    dedup = f"{verified.generated_at_ms}:{verified.signature}"
    status = payload.get("status") if isinstance(payload, dict) else None
    if not isinstance(status, str):
        return NewEvent(dedup, body, verified.generated_at_ms, None, None, None, True, [], [])
    plan = route(config.rules, config.unmatched, payload)
    return NewEvent(
        dedup_key=dedup,
        body=body,
        generated_at=verified.generated_at_ms,
        status=status,
        session_id=_id_field(payload, "session_id"),
        encounter_id=_id_field(payload, "encounter_id"),
        malformed=False,
        rules=plan.rules,
        actions=plan.actions,
    )


def _id_field(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return str(value)[:200] if isinstance(value, str | int) else None


class _Slot:
    """One waiting request; its lock is released when it is done or made the leader."""

    __slots__ = ("done", "error", "event", "lead", "result", "wake")

    def __init__(self, event: NewEvent):
        self.event = event
        self.result: Recorded | None = None
        self.error: BaseException | None = None
        self.done = False
        self.lead = False
        self.wake = threading.Lock()
        self.wake.acquire()


class Recorder:
    """Group commit over a Store; thread-safe; each call returns once its event is durable.

    The first request to arrive leads: it takes the store's write lock, gathers everything
    queued by then, commits it in one transaction, wakes exactly the requests it
    committed, and hands the lead to the next one queued (no thundering herd).
    """

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._queue: list[_Slot] = []
        self._committing = False

    def record(self, event: NewEvent) -> Recorded:
        slot = _Slot(event)
        with self._lock:
            self._queue.append(slot)
            if not self._committing:
                self._committing = slot.lead = True
        if not slot.lead:
            slot.wake.acquire()  # until committed by a leader, or made the leader
        if not slot.done:
            self._lead()
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    def _lead(self) -> None:
        batch: list[_Slot] = []
        try:
            with self.store.exclusive():  # while waiting for it, more requests queue up
                with self._lock:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                results = self.store.record([s.event for s in batch])
            for s, r in zip(batch, results, strict=True):
                s.result = r
        except BaseException as exc:
            for s in batch:
                s.error = exc
            if not batch:
                raise
        finally:
            with self._lock:
                for s in batch:
                    s.done = True
                following = self._queue[0] if self._queue else None
                if following is not None:
                    following.lead = True
                else:
                    self._committing = False
            for s in batch[1:]:
                s.wake.release()
            if following is not None:
                following.wake.release()
