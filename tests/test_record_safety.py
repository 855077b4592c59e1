"""Recording never refuses a signed body for what it contains (both backends)."""

from __future__ import annotations

from pathlib import Path

from suki_relay.receive.record import commit, recorder, storable, to_event
from suki_relay.receive.verify import Verified
from suki_relay.store import NewEvent
from suki_relay.testing import build_config

from .conftest import open_test_store


def test_an_event_the_store_refuses_is_kept_as_malformed(store_url: str, tmp_path: Path) -> None:
    store = open_test_store(store_url, tmp_path)
    raw = NewEvent("k1", b'{"status": "failure"}', 1, "failure", "\ud800\x00", None, False,
                   ["r"], ["a"])  # as if a field had reached the store unescaped
    kept, recorded = commit(recorder(store), raw)
    assert kept.malformed and kept.actions == [] and not recorded.duplicate
    detail = store.event(recorded.event_id)
    assert detail is not None and detail.event.malformed and detail.body == raw.body
    assert detail.deliveries == []


def test_ids_are_stored_in_a_safe_form(store_url: str, tmp_path: Path) -> None:
    store = open_test_store(store_url, tmp_path)
    config = build_config({}, tmp_path)
    body = b'{"status": "a\\u0000b", "session_id": "\\ud800x", "encounter_id": "' + \
        b"e" * 300 + b'"}'
    event = to_event(body, Verified(1, "ab" * 32), config)
    assert not event.malformed
    _, recorded = commit(recorder(store), event)
    detail = store.event(recorded.event_id)
    assert detail is not None and detail.body == body
    assert (detail.event.status, detail.event.session_id) == ("a\\u0000b", "\\ud800x")
    assert detail.event.encounter_id == "e" * 200


def test_nesting_past_the_recursion_limit_is_malformed_not_an_error(tmp_path: Path) -> None:
    config = build_config({}, tmp_path)
    body = b'{"status": "failure", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert to_event(body, Verified(1, "ab" * 32), config).malformed


def test_storable_changes_only_what_a_backend_refuses() -> None:
    assert storable("plain \u00e9\u4e2d \n") == "plain \u00e9\u4e2d \n"
    assert storable("\x00") == "\\u0000"
    assert storable("a\udc80") == "a\\udc80"
