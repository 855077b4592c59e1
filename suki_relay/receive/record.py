"""Recording: turn a verified body into an event with its plan, and commit it.

Routing happens here, at receipt, so the deliveries are committed in the same transaction
as the event. Concurrent requests in one process share a transaction (group commit, see
store/group_commit.py); each request is answered once the commit holding its event is done.

A signed body is never refused for what it contains: the raw bytes are kept as received,
and the few fields stored as text (status, session and encounter ids) are stored in a form
every backend takes (a NUL or a lone surrogate is written as its ``\\u`` escape).
NaN and Infinity are read as numbers (json.loads does): not JSON, but signed, and kept and
delivered as sent (the body is stored as bytes, never as a database JSON type).
A body that is not a JSON object with a string status, or nests deeper than the parser
can follow, is kept as malformed. If an event still cannot be committed for any reason
other than the store being unavailable, it is kept as malformed instead.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from suki_relay.config.load import Config
from suki_relay.config.routing import route
from suki_relay.receive.verify import Verified
from suki_relay.store import NewEvent, Receiving, Recorded, StoreUnavailable
from suki_relay.store.group_commit import GroupCommit

TEXT_MAX = 200  # longest status or id kept in its own column (the body keeps all of it)
# the longest a request's transaction may take once it has a connection (PostgreSQL: a
# database that takes the query and never answers); then the spool takes it, or 503
COMMIT_SECONDS = 5.0


def to_event(body: bytes, verified: Verified, config: Config,
             config_version: str | None = None) -> NewEvent:
    """Parse and route; a body that is not a JSON object with a string status is malformed.
    ``config_version``: the version of ``config``, recorded with the event."""
    payload: Any
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        payload = None
    dedup = f"{verified.generated_at_ms}:{verified.signature}"
    status = payload.get("status") if isinstance(payload, dict) else None
    if not isinstance(status, str):
        return malformed(NewEvent(dedup, body, verified.generated_at_ms, None, None, None,
                                  True, [], [], config_version=config_version))
    plan = route(config.rules, config.unmatched, payload)
    return NewEvent(
        dedup_key=dedup,
        body=body,
        generated_at=verified.generated_at_ms,
        status=storable(status[:TEXT_MAX]),
        session_id=_id_field(payload, "session_id"),
        encounter_id=_id_field(payload, "encounter_id"),
        malformed=False,
        rules=plan.rules,
        actions=plan.actions,
        config_version=config_version,
    )


def malformed(event: NewEvent) -> NewEvent:
    """The same request kept as malformed: raw body and identity only, nothing planned."""
    return dataclasses.replace(event, status=None, session_id=None, encounter_id=None,
                               malformed=True, rules=[], actions=[])


def storable(text: str) -> str:
    """``text`` as every backend stores it: NUL (refused by PostgreSQL) and lone surrogates
    (not UTF-8) as their escapes; anything else unchanged."""
    if "\x00" in text:
        text = text.replace("\x00", "\\u0000")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _id_field(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if isinstance(value, str):
        return storable(value[:TEXT_MAX])
    if isinstance(value, int):
        return str(value)[:TEXT_MAX]
    return None


def recorder(store: Receiving) -> GroupCommit[NewEvent, Recorded]:
    """Records events for concurrent requests, many per transaction; after a batch the
    store refused, one more transaction records each event, or else it kept as malformed
    (store.record_each). Each transaction takes at most COMMIT_SECONDS once it has its
    connection (store.bounded), or StoreUnavailable: the spool takes the batch."""
    def record(events: list[NewEvent]) -> list[Recorded]:
        with store.bounded(COMMIT_SECONDS):
            return store.record(events)

    def record_each(events: list[NewEvent]) -> list[Recorded | Exception]:
        with store.bounded(COMMIT_SECONDS):
            return store.record_each(events, malformed)

    return GroupCommit(record, store.exclusive, record_each,
                       gather_seconds=store.gather_seconds, leaders=store.batches_at_once)


def commit(commits: GroupCommit[NewEvent, Recorded], event: NewEvent) -> tuple[NewEvent, Recorded]:
    """Commit ``event``; returns what was committed: the event itself, or, if the store
    refused it as it was, the same request kept as malformed. Raises StoreUnavailable and
    nothing else: a store that refuses even the malformed event (a PostgreSQL node that
    came back as a read-only standby, privileges taken away, an SQLite file damaged) can
    commit nothing, which is what unavailable means; the spool takes the event, or the
    answer is 503 saying so, never a bare 500."""
    try:
        recorded = commits.submit(event)
    except StoreUnavailable:
        raise
    except Exception as exc:
        raise StoreUnavailable(f"the store refuses every write: {type(exc).__name__}") from None
    return (malformed(event) if recorded.fallback else event), recorded
