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
from dataclasses import dataclass
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


@dataclass
class _Slot:
    event: NewEvent
    result: Recorded | None = None
    error: BaseException | None = None
    done: bool = False


class Recorder:
    """Group commit over a Store; thread-safe; each call returns once its event is durable."""

    def __init__(self, store: Store):
        self.store = store
        self._cond = threading.Condition()
        self._queue: list[_Slot] = []
        self._committing = False

    def record(self, event: NewEvent) -> Recorded:
        slot = _Slot(event)
        with self._cond:
            self._queue.append(slot)
        while True:
            with self._cond:
                while not slot.done and self._committing:
                    self._cond.wait()
                if slot.done:
                    return self._result(slot)
                self._committing = True
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            self._commit(batch)

    def _commit(self, batch: list[_Slot]) -> None:
        try:
            results = self.store.record([s.event for s in batch])
            for s, r in zip(batch, results, strict=True):
                s.result = r
        except BaseException as exc:
            for s in batch:
                s.error = exc
        finally:
            with self._cond:
                for s in batch:
                    s.done = True
                self._committing = False
                self._cond.notify_all()

    @staticmethod
    def _result(slot: _Slot) -> Recorded:
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result
