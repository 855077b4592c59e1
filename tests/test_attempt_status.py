"""A successful attempt records the target's HTTP status (shown by `suki-relay show`)."""

from __future__ import annotations

import time
from pathlib import Path

from suki_relay.deliver.deliverer import attempt
from suki_relay.store import Claimed
from suki_relay.testing import Reply, Sink, build_config, sample


def claimed(action: str) -> Claimed:
    return Claimed(id="dlv_1", event_id="evt_1", action=action, attempt=1, tries=1,
                   cycle_started_at=time.time(), body=sample("failure"), received_at=time.time())


def test_a_successful_attempt_records_the_http_status(tmp_path: Path) -> None:
    with Sink(Reply(202)) as target:
        config = build_config({"actions": {
            "fwd": {"type": "http", "url": target.url + "/in"},
            "chat": {"type": "slack", "webhook_url": target.url + "/slack"}}}, tmp_path)
        for name in ("fwd", "chat"):
            outcome = attempt(config, claimed(name))
            assert outcome.outcome == "ok" and outcome.http_status == 202, outcome


def test_a_failed_attempt_still_records_the_status(tmp_path: Path) -> None:
    with Sink(Reply(503)) as target:
        config = build_config({"actions": {"fwd": {"type": "http", "url": target.url}}},
                              tmp_path)
        outcome = attempt(config, claimed("fwd"))
        assert outcome.outcome == "retry" and outcome.http_status == 503
