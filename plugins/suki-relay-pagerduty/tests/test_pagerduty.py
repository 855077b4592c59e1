"""The plugin's own tests, written with suki_relay.testing like the relay's."""

from __future__ import annotations

from pathlib import Path

import pytest

from suki_relay.deliver.registry import discover
from suki_relay.plugin import ConfigError, PermanentError, RetryableError
from suki_relay.testing import (
    RawServer,
    Reply,
    Sink,
    build_action,
    drip,
    in_thread,
    make_delivery,
    plant_netrc,
)


def test_is_discovered_through_the_entry_point() -> None:
    found = discover()["pagerduty"]
    assert found.package == "suki-relay-pagerduty" and found.cls is not None


def test_triggers_an_incident(tmp_path: Path) -> None:
    with Sink(default=Reply(202, b'{"status": "success"}')) as pd:
        action = build_action("pagerduty", {"routing_key": "R0UT1NG", "events_url": pd.url,
                                            "severity": "critical"}, tmp_path)
        assert action.deliver(make_delivery("failure")) == "incident triggered"
        sent = pd.received[0].json()
    assert sent["routing_key"] == "R0UT1NG"
    assert sent["event_action"] == "trigger"
    assert sent["dedup_key"] == "suki-20965414-929a-4f71-a3e5-b92bec07d086"
    assert sent["payload"]["summary"] == "Suki session failure: ERROR_CODE_TRANSCRIPTION"
    assert sent["payload"]["severity"] == "critical"


@pytest.mark.parametrize("status, error", [(400, PermanentError), (429, RetryableError),
                                           (503, RetryableError)])
def test_failures_are_classified(tmp_path: Path, status: int, error: type) -> None:
    with Sink(default=Reply(status, b"{}")) as pd:
        action = build_action("pagerduty", {"routing_key": "k", "events_url": pd.url}, tmp_path)
        with pytest.raises(error):
            action.deliver(make_delivery("failure"))


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_action("pagerduty", {"severity": "apocalyptic"}, tmp_path)
    text = str(info.value)
    assert "actions.under-test.severity: expected one of" in text
    assert "actions.under-test.routing_key: required option missing" in text


def test_preview_masks_the_routing_key(tmp_path: Path) -> None:
    action = build_action("pagerduty", {"routing_key": "SECRET-KEY"}, tmp_path)
    preview = action.preview(make_delivery("failure"))
    assert "SECRET-KEY" not in str(preview)
    assert preview["url"] == "https://events.pagerduty.com/v2/enqueue"
    assert preview["json"]["routing_key"] == "***"  # shown, masked
    assert preview["json"]["event_action"] == "trigger"
    assert preview["json"]["payload"]["custom_details"]["status"] == "failure"


def test_netrc_credentials_never_reach_pagerduty(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain requests.Session would add Basic auth from ~/.netrc; the plugin's sessions
    come from suki_relay.deliver.outbound, which never reads it."""
    plant_netrc(monkeypatch, tmp_path)
    with Sink(default=Reply(202, b"{}")) as pd:
        action = build_action("pagerduty", {"routing_key": "k", "events_url": pd.url}, tmp_path)
        action.deliver(make_delivery("failure"))
        assert "Authorization" not in pd.received[0].headers


def test_a_reply_that_never_ends_is_cut_off_at_the_deadline(tmp_path: Path) -> None:
    with RawServer(drip(b"HTTP/1.1 202 Accepted\r\nContent-Length: 100000000\r\n\r\n")) as pd:
        action = build_action("pagerduty", {"routing_key": "k", "events_url": pd.url,
                                            "timeout_seconds": 1}, tmp_path)
        assert in_thread(lambda: action.deliver(make_delivery("failure"))) == (
            "incident triggered")
