"""Outbound HTTP shared by the actions: what reaches a target, besides what it is sent."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests

from suki_relay import outbound
from suki_relay.errors import PermanentError, RetryableError
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


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("", None), ("120", 120.0), (" 5 ", 5.0), ("soon", None), ("-1", None)])
def test_retry_after_in_seconds(header: str | None, expected: float | None) -> None:
    assert outbound.parse_retry_after(header) == expected


def test_retry_after_as_an_http_date() -> None:
    now = 1_800_000_000.0
    later = format_datetime(datetime.fromtimestamp(now + 90, UTC), usegmt=True)
    earlier = format_datetime(datetime.fromtimestamp(now - 90, UTC), usegmt=True)
    assert outbound.parse_retry_after(later, now) == pytest.approx(90)
    assert outbound.parse_retry_after(earlier, now) == 0.0


def answer(code: int) -> requests.Response:
    resp = requests.Response()
    resp.status_code = code
    return resp


@pytest.mark.parametrize("code", [200, 201, 204, 299])
def test_2xx_is_success(code: int) -> None:
    outbound.raise_for_status(answer(code), "target")


@pytest.mark.parametrize(("code", "error"), [
    (301, PermanentError), (400, PermanentError), (401, PermanentError), (404, PermanentError),
    (408, RetryableError), (429, RetryableError), (500, RetryableError), (599, RetryableError)])
def test_other_codes_are_classed(code: int, error: type) -> None:
    with pytest.raises(error, match=f"target answered {code}"):
        outbound.raise_for_status(answer(code), "target")


def test_a_request_that_cannot_be_made_is_permanent_and_names_no_url() -> None:
    with pytest.raises(PermanentError) as info:
        outbound.send(outbound.new_session(), "POST", "http://[::1]:bad/secret", what="target",
                      timeout=1)
    assert "secret" not in str(info.value)
