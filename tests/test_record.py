"""Turning a verified body into an event and its plan (no I/O)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from suki_relay.receive.record import to_event
from suki_relay.receive.verify import Verified
from suki_relay.testing import build_config


@pytest.fixture
def config(tmp_path: Path):  # type: ignore[no-untyped-def]
    return build_config({"actions": {"fwd": {"type": "http", "url": "http://127.0.0.1:9/x"}},
                         "rules": [{"name": "failures", "when": {"status": "failure"},
                                    "do": ["fwd"]}]}, tmp_path)


def verified(sig: str = "ab" * 32) -> Verified:
    return Verified(1_700_000_000_000, sig)


def test_a_routed_event_with_its_identity(config) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({"status": "failure", "session_id": "s" * 300, "encounter_id": 42}).encode()
    ev = to_event(body, verified(), config)
    assert (ev.status, ev.rules, ev.actions, ev.malformed) == ("failure", ["failures"], ["fwd"],
                                                                False)
    assert ev.session_id == "s" * 200 and ev.encounter_id == "42"  # bounded, as text
    assert ev.dedup_key == f"1700000000000:{'ab' * 32}" and ev.body == body


def test_the_same_body_signed_twice_is_two_events(config) -> None:  # type: ignore[no-untyped-def]
    body = b'{"status": "failure"}'
    assert to_event(body, verified("ab" * 32), config).dedup_key != \
        to_event(body, verified("cd" * 32), config).dedup_key


@pytest.mark.parametrize("body", [b"[1]", b"null", b'{"status": null}', b'{"status": ["a"]}',
                                  b"\xff", pytest.param(b"[" * 10**5 + b"]" * 10**5, id="too-deep")])
def test_malformed_bodies_plan_nothing(config, body: bytes) -> None:  # type: ignore[no-untyped-def]
    ev = to_event(body, verified(), config)
    assert ev.malformed and ev.status is None and ev.actions == [] and ev.body == body


def test_text_the_store_cannot_keep_as_it_is_is_kept_escaped(config) -> None:  # type: ignore[no-untyped-def]
    ev = to_event(b'{"status": "fail\\udc80", "session_id": "\\ud800x", "encounter_id": [1]}',
                  verified(), config)
    assert not ev.malformed and ev.encounter_id is None
    assert (ev.status, ev.session_id) == ("fail\\udc80", "\\ud800x")
