"""The ``http`` action on its own: what it sends, and how a target's answer is classed."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml
from werkzeug.serving import make_server

from suki_relay import protocol
from suki_relay.deliver.deliverer import iso
from suki_relay.errors import ConfigError, PermanentError, RetryableError
from suki_relay.store import EventFilter
from suki_relay.testing import (
    Reply,
    Sink,
    build_action,
    free_port,
    make_delivery,
)


def test_forwards_the_raw_body_verbatim_with_its_identity(tmp_path: Path) -> None:
    with Sink() as target:
        action = build_action("http", {"url": target.url + "/in"}, tmp_path)
        delivery = make_delivery("failure")
        action.deliver(delivery)
        (got,) = target.received
    assert (got.method, got.path, got.body) == ("POST", "/in", delivery.raw_body)
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Idempotency-Key"] == delivery.id
    assert got.headers["X-Suki-Relay-Event"] == delivery.event_id


def test_method_headers_and_body_are_templates(tmp_path: Path) -> None:
    with Sink() as target:
        action = build_action("http", {
            "url": target.url + "/s/{{ event.session_id }}", "method": "PUT",
            "headers": {"X-Status": "{{ event.status }}"}, "content_type": "text/plain",
            "body": "{{ event.status }} #{{ attempt }}"}, tmp_path)
        delivery = make_delivery("success", attempt=3)
        action.deliver(delivery)
        (got,) = target.received
    assert got.method == "PUT" and got.path == f"/s/{delivery.event['session_id']}"
    assert got.headers["X-Status"] == "success" and got.headers["Content-Type"] == "text/plain"
    assert got.body == b"success #3"


def test_a_header_rendered_beyond_latin_1_fails_for_good_saying_so(tmp_path: Path) -> None:
    """HTTP headers carry Latin-1 only: a value rendered from the payload beyond it fails
    for good (it renders the same on every retry), naming the header value as the cause,
    not the URL's host name; nothing is sent."""
    with Sink() as target:
        action = build_action("http", {"url": target.url,
                                       "headers": {"X-Detail": "{{ event.error_detail }}"}},
                              tmp_path)
        delivery = make_delivery("failure")
        delivery.event["error_detail"] = "PHI-\u674e"
        with pytest.raises(PermanentError) as info:
            action.deliver(delivery)
    assert str(info.value) == ("under-test target: a header value holds a character beyond "
                               "Latin-1, which HTTP headers cannot carry")
    assert target.received == []


def test_a_signed_forward_verifies_as_suki_signs(tmp_path: Path) -> None:
    with Sink() as target:
        build_action("http", {"url": target.url, "sign_secret": "hop"}, tmp_path).deliver(
            make_delivery())
        (got,) = target.received
    assert protocol.matches(["hop"], got.headers["generated-at"], got.body, got.headers["X-API-Key"])
    assert not protocol.matches(["other"], got.headers["generated-at"], got.body,
                               got.headers["X-API-Key"])


@pytest.mark.parametrize(("reply", "error", "status"), [
    (Reply(400), PermanentError, 400), (Reply(404), PermanentError, 404),
    (Reply(302, headers={"Location": "http://127.0.0.1:9/"}), PermanentError, 302),
    (Reply(408), RetryableError, 408), (Reply(429), RetryableError, 429),
    (Reply(500), RetryableError, 500), (Reply(503), RetryableError, 503)])
def test_answers_decide_retry_or_give_up(tmp_path: Path, reply: Reply, error: type,
                                         status: int) -> None:
    with Sink(default=reply) as target:
        action = build_action("http", {"url": target.url + "/secret-path"}, tmp_path)
        with pytest.raises(error) as info:
            action.deliver(make_delivery())
        assert len(target.received) == 1  # a redirect is not followed
    assert info.value.status == status  # type: ignore[attr-defined]
    assert f"answered {status}" in str(info.value) and "secret-path" not in str(info.value)


def test_retry_after_is_passed_on(tmp_path: Path) -> None:
    with Sink(default=Reply(503, headers={"Retry-After": "7"})) as target, \
            pytest.raises(RetryableError) as info:
        build_action("http", {"url": target.url}, tmp_path).deliver(make_delivery())
    assert info.value.retry_after == 7


def test_no_listener_and_no_answer_are_retryable(tmp_path: Path) -> None:
    closed = build_action("http", {"url": f"http://127.0.0.1:{free_port()}/"}, tmp_path)
    with pytest.raises(RetryableError, match="connection failed"):
        closed.deliver(make_delivery())
    with Sink(default=Reply(200, delay=5)) as slow:
        action = build_action("http", {"url": slow.url, "timeout_seconds": 0.2}, tmp_path)
        with pytest.raises(RetryableError, match=r"no answer within 0\.2s"):
            action.deliver(make_delivery())


def test_preview_masks_secret_headers(tmp_path: Path) -> None:
    action = build_action("http", {"url": "http://127.0.0.1:9/",
                                   "headers": {"Authorization": "Bearer very-secret"}}, tmp_path)
    shown = action.preview(make_delivery())
    assert "very-secret" not in json.dumps(shown)
    assert shown["method"] == "POST" and shown["url"] == "http://127.0.0.1:9/"


@pytest.mark.parametrize(("options", "fragment"), [
    ({"url": "ftp://x"}, "http:// or https://"),
    ({"url": "http://x", "timeout_seconds": 0}, "timeout_seconds"),
    ({"url": "http://x", "method": "DELETE"}, "method")])
def test_bad_options_are_config_errors(tmp_path: Path, options: dict, fragment: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=fragment):
        build_action("http", options, tmp_path)


def test_retries_are_signed_alike_so_the_next_relay_deduplicates(
        tmp_path: Path, local_relay) -> None:  # type: ignore[no-untyped-def]
    """A retry (the answer to the first attempt was lost, say) carries the same
    generated-at and signature, so a suki-relay downstream records the event once."""
    down = tmp_path / "downstream"
    down.mkdir()
    config = down / "actions.yaml"
    config.write_text(yaml.safe_dump({"receiver": {"secrets": ["next-hop"]},
                                      "store": "sqlite:///down.db"}), encoding="utf-8")
    downstream = local_relay(config, deliver=False)
    server = make_server("127.0.0.1", 0, downstream.app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        action = build_action("http", {"url": f"http://127.0.0.1:{server.port}{downstream.path}",
                                       "sign_secret": "next-hop"}, tmp_path)
        delivery = make_delivery("success")
        delivery.received_at = iso(time.time() - 5)
        action.deliver(delivery)
        delivery.attempt = 2
        action.deliver(delivery)
    finally:
        server.shutdown()
    assert len(downstream.store.events(EventFilter())) == 1


def test_a_retry_after_a_long_outage_is_signed_recently_and_alike(tmp_path: Path) -> None:
    """An event received a day ago is signed with a time under sign_window_seconds old
    (a receiver's replay window would refuse the original time), the same on each retry."""
    action = build_action("http", {"url": "http://127.0.0.1:9/", "sign_secret": "s",
                                   "sign_window_seconds": 60}, tmp_path)
    delivery = make_delivery("success")
    delivery.received_at = iso(time.time() - 86400 - 7)
    _, first, body = action.request(delivery)
    delivery.attempt = 3
    _, again, _ = action.request(delivery)
    assert (first["generated-at"], first["X-API-Key"]) == (again["generated-at"],
                                                           again["X-API-Key"])
    assert 0 <= time.time() - int(first["generated-at"]) / 1000 < 60
    assert protocol.matches(["s"], first["generated-at"], body, first["X-API-Key"])


@pytest.mark.parametrize("window", [0, -1, 86400])
def test_the_sign_window_is_checked(tmp_path: Path, window: float) -> None:
    with pytest.raises(ConfigError, match="sign_window_seconds"):
        build_action("http", {"url": "http://127.0.0.1:9/", "sign_secret": "s",
                              "sign_window_seconds": window}, tmp_path)
