"""kill -9 of every relay process while the engine holds an HL7 message it has taken and
not acknowledged: after the restart the note is sent again with the same MSH-10, and a
de-duplicating engine files it once. Nothing lost, nothing filed twice."""

from __future__ import annotations

import signal

import pytest

from suki_relay.testing import SukiStandIn, post_signed, unique_body, wait_until

from ..conftest import open_test_store
from ..mllp_standin import Answer, MllpStandIn


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_kill_9_while_the_engine_holds_the_message(write_config, relay, store_url) -> None:  # type: ignore[no-untyped-def]
    with SukiStandIn() as suki, MllpStandIn(answers=[Answer(silent=True)], dedupe=True) as engine:
        cfg = write_config({
            "suki": suki.settings(),
            "actions": {"to-engine": {
                "type": "hl7v2", **engine.settings(), "timeout_seconds": 60,
                "patient_id": "{{ event.additional_info.patient_id }}"}},
            "rules": [{"name": "notes", "when": {"status": "success"}, "do": ["to-engine"]}],
        })
        first = relay(cfg)
        event_id = post_signed(first.webhook, unique_body("success")).json()["event_id"]
        wait_until(lambda: len(engine.received) == 1, message="the engine holding the message")
        first.kill9()
        assert first.proc.returncode == -signal.SIGKILL
        relay(cfg)
        store = open_test_store(store_url, cfg.parent)
        wait_until(lambda: [d.state for d in store.deliveries(event_id=event_id)] == ["done"],
                   timeout=30, message="the delivery done after the restart")
        assert len(engine.received) == 2
        assert engine.received[0].control_id == engine.received[1].control_id
        assert engine.received[0].text == engine.received[1].text
        assert len(engine.filed) == 1
        (d,) = store.event(event_id).deliveries  # type: ignore[union-attr]
        assert [a.outcome for a in d.attempts] == ["lost", "ok"]
