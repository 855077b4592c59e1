"""Outbound HTTP shared by the actions: what reaches a target, besides what it is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from suki_relay.testing import Sink, build_action, make_delivery


def test_netrc_credentials_never_reach_a_target(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """requests would add Basic auth from ~/.netrc for a matching host; the relay must not
    hand a credential to a target the config did not give one."""
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password hunter2\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with Sink() as sink:
        http = build_action("http", {"url": sink.url}, tmp_path)
        slack = build_action("slack", {"webhook_url": sink.url, "text": "{{ event.status }}"},
                             tmp_path)
        http.deliver(make_delivery())
        slack.deliver(make_delivery())
        assert len(sink.received) == 2
        assert all("Authorization" not in got.headers for got in sink.received)
