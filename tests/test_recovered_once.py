"""A session recovered while its own notification still waited (in another node's spool,
say): the notification, when it is recorded, plans nothing. One session's success, one set
of deliveries; nothing Suki sent is dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from suki_relay.store import NewEvent, Store

from .conftest import open_test_store


@pytest.fixture
def store(tmp_path: Path, store_url: str) -> Store:
    return open_test_store(store_url, tmp_path)


def event(key: str, session: str, status: str = "success", recovered: bool = False) -> NewEvent:
    return NewEvent(key, b'{"status": "%s"}' % status.encode(), None if recovered else 1, status,
                    session, None, False, ["notes"], ["file-note", "audit"],
                    recovered=recovered)


def test_a_late_notification_of_a_recovered_session_plans_nothing(store: Store) -> None:
    recovered = store.record_recovered(event("recovered:s-1", "s-1", recovered=True))
    late, other, failed = store.record([event("gen:1", "s-1"), event("gen:2", "s-2"),
                                        event("gen:3", "s-1", "failure")])
    assert not late.duplicate  # recorded: nothing Suki sends is dropped ...
    assert store.event(late.event_id).deliveries == []  # ... but planned once only
    assert sorted(d.delivery.action for d in store.event(recovered.event_id).deliveries) == [
        "audit", "file-note"]
    # another session, or another outcome of this one, is routed as ever
    assert len(store.event(other.event_id).deliveries) == 2
    assert len(store.event(failed.event_id).deliveries) == 2
