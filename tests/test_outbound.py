"""Outbound HTTP shared by the actions: what reaches a target, besides what it is sent."""

from __future__ import annotations

import gzip
import json
import zlib
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from suki_relay.config.check import sample
from suki_relay.deliver import outbound
from suki_relay.deliver.deliverer import Deliverer
from suki_relay.errors import ConfigError, PermanentError, RetryableError
from suki_relay.receive.record import to_event
from suki_relay.receive.verify import Verified
from suki_relay.store import open_store
from suki_relay.testing import (
    RawServer,
    Reply,
    Sink,
    build_action,
    build_config,
    drip,
    in_thread,
    make_delivery,
    plant_netrc,
    unique_body,
    wait_until,
)


def test_netrc_credentials_never_reach_a_target(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """requests would add Basic auth from ~/.netrc for a matching host; the relay must not
    hand a credential to a target the config did not give one."""
    plant_netrc(monkeypatch, tmp_path)
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


# ---------------------------------------------------------------- deadline and reply bound

ENDLESS_BODY = drip(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
ENDLESS_CHUNKS = drip(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n")
ENDLESS_HEADERS = drip(b"HTTP/1.1 200 OK\r\n", b"X-Drip: x\r\n", every=0.2)


@pytest.mark.parametrize("script", [ENDLESS_BODY, ENDLESS_CHUNKS], ids=["length", "chunked"])
def test_a_2xx_whose_body_never_ends_is_delivered_within_the_deadline(
        tmp_path: Path, script: Any) -> None:
    """A target that answers 200 and drips its body forever (a byte every 50 ms defeats
    any per-read timeout) frees the delivery within timeout_seconds; the 200 counts."""
    with RawServer(script) as target:
        http = build_action("http", {"url": target.url, "timeout_seconds": 1}, tmp_path)
        slack = build_action("slack", {"webhook_url": target.url, "timeout_seconds": 1},
                             tmp_path)
        assert in_thread(lambda: http.deliver(make_delivery())) == (
            "HTTP 200 (reply body cut off: deadline)")
        assert in_thread(lambda: slack.deliver(make_delivery())) == (
            "posted (reply body cut off: deadline)")


def test_headers_that_never_end_are_a_retryable_timeout(tmp_path: Path) -> None:
    with RawServer(ENDLESS_HEADERS) as target:
        http = build_action("http", {"url": target.url, "timeout_seconds": 1}, tmp_path)
        with pytest.raises(RetryableError, match="no answer within 1s"):
            in_thread(lambda: http.deliver(make_delivery()))
        assert target.requests == 1


def test_an_endless_reply_frees_the_max_concurrency_slot(tmp_path: Path) -> None:
    """Through the real delivery loop: the slot of max_concurrency 1 is given back, so the
    second event's delivery happens too."""
    with RawServer(ENDLESS_BODY) as target:
        config = build_config({"actions": {"fwd": {"type": "http", "url": target.url,
                                                   "timeout_seconds": 1,
                                                   "max_concurrency": 1}},
                               "rules": [{"name": "all", "do": ["fwd"]}],
                               "store": "sqlite:///relay.db"}, tmp_path)
        store = open_store(config.store_url, tmp_path)
        deliverer = Deliverer(config, store)
        try:
            recorded = [store.record([to_event(unique_body(), Verified(i, f"{i:064x}"),
                                               config)])[0] for i in (1, 2)]
            deliverer.start()
            for rec in recorded:
                wait_until(lambda rec=rec: store.deliveries(event_id=rec.event_id,
                                                            state="done"), 20,
                           message="the delivery to finish")
        finally:
            deliverer.stop(5)
            store.close()
        assert target.requests == 2


def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzipped (about a thousandth of that)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    return b"".join(z.compress(block) for _ in range(size // len(block))) + z.flush()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity"])
def test_replies_are_read_up_to_a_bound_after_decompression(encoding: str) -> None:
    big = 64 * 1024 * 1024 if encoding != "identity" else 4 * 1024 * 1024
    if encoding == "gzip":
        body = gzip_bomb(big)
    elif encoding == "deflate":
        body = zlib.compress(bytes(big), 9)
    else:
        body = bytes(big)
    headers = {"Content-Encoding": encoding} if encoding != "identity" else {}
    with Sink(default=Reply(200, body, headers)) as target:
        resp = outbound.send(outbound.new_session(), "POST", target.url, what="t", timeout=10)
    assert len(resp.content) == 1024 * 1024  # the documented bound for targets
    assert getattr(resp, "cut_off", None) == "size"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate", "identity"])
def test_a_whole_reply_is_decoded(encoding: str) -> None:
    doc = json.dumps({"summary": [{"title": "T", "content": "c" * 5000}]}).encode()
    body, name = {
        "gzip": (gzip.compress(doc), "gzip"),
        "deflate": (zlib.compress(doc), "deflate"),
        "raw-deflate": (zlib.compress(doc)[2:-4], "deflate"),
        "identity": (doc, "identity"),
    }[encoding]
    with Sink(default=Reply(200, body, {"Content-Encoding": name})) as target:
        session = outbound.new_session()
        for _ in range(2):  # the connection is reused after a whole reply
            resp = outbound.send(session, "GET", target.url, what="t", timeout=10)
            assert resp.content == doc and resp.cut_off is None
            outbound.require_whole(resp, "t")
        assert target.received[0].headers["Accept-Encoding"] == "gzip, deflate"


def test_an_unasked_encoding_is_not_a_document() -> None:
    with Sink(default=Reply(200, b"\x00\x01", {"Content-Encoding": "br"})) as target:
        resp = outbound.send(outbound.new_session(), "GET", target.url, what="t", timeout=10)
    assert resp.cut_off == "encoding"
    with pytest.raises(PermanentError, match="could not be decoded"):
        outbound.require_whole(resp, "t")


@pytest.mark.parametrize("host", ["a" * 64 + ".example", "a..example", "\u00e9" + "a" * 70])
def test_a_host_name_failing_idna_is_permanent(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="not a valid \\(IDNA\\) host name"):
        build_action("http", {"url": f"http://{host}/x"}, tmp_path)
    http = build_action("http", {"url": "http://{{ event.session_id }}/x"}, tmp_path)
    event = json.loads(sample("failure"))
    event["session_id"] = host
    with pytest.raises(PermanentError, match=r"IDNA|InvalidURL"):  # not retried for a day
        http.deliver(make_delivery(event))


def test_a_stopped_sink_closes_its_kept_alive_connections() -> None:
    """A stand-in stops as a server process does: a client's kept-alive connection is
    closed with it, so the next request connects anew and is refused (never sent),
    instead of being answered by a server that was stopped."""
    session = outbound.new_session()
    sink = Sink()
    try:
        first = outbound.send(session, "GET", sink.url + "/a", what="target", timeout=5)
        assert first.status_code == 200
    finally:
        sink.stop()
    with pytest.raises(outbound.NotSent):
        outbound.send(session, "GET", sink.url + "/b", what="target", timeout=5)
    assert [r.path for r in sink.received] == ["/a"]
