"""Recording: turn a verified body into an event with its plan, and commit it.

Routing happens here, at receipt, so the deliveries are committed in the same transaction
as the event. Concurrent requests in one process share a transaction (group commit, see
store/group_commit.py); each request is answered once the commit holding its event is done.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from .config import Config
from .routing import route
from .store import NewEvent, Recorded, Store
from .store.group_commit import GroupCommit
from .verify import Verified


def to_event(body: bytes, verified: Verified, config: Config) -> NewEvent:
    """Parse and route; a body that is not a JSON object with a string status (text the
    store can keep) is malformed."""
    payload: Any = None
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        payload = json.loads(body)
    dedup = f"{verified.generated_at_ms}:{verified.signature}"
    status = payload.get("status") if isinstance(payload, dict) else None
    if not _text(status):
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


def _text(value: Any) -> bool:
    """A string the store can keep as text: JSON may escape a lone surrogate (\\ud800),
    which no UTF-8 column accepts."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _id_field(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if isinstance(value, int) or _text(value):
        return str(value)[:200]
    return None


def recorder(store: Store) -> GroupCommit[NewEvent, Recorded]:
    """Records events for concurrent requests, many per transaction."""
    return GroupCommit(store.record, store.exclusive)
