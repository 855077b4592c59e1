"""The relay under a real gunicorn: `suki-relay serve` and plain `gunicorn
suki_relay.wsgi:app` receive and deliver; the request contract itself is tested in
process (tests/test_app.py)."""

from __future__ import annotations

import socket

import pytest

from suki_relay.config.check import sample
from suki_relay.testing import SECRET, post_signed, unique_body, wait_until

from ..conftest import http_action, run_cli

pytestmark = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)


def test_plain_gunicorn_receives_and_delivers(write_config, relay, sink) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    cfg = write_config({"actions": {"target": http_action(target.url)},
                        "rules": [{"name": "all", "do": ["target"]}]})
    r = relay(cfg, plain_gunicorn=True)
    assert post_signed(r.webhook, unique_body()).status_code == 200
    wait_until(lambda: target.received, message="delivery via gunicorn suki_relay.wsgi:app")


def test_an_oversized_body_is_answered_without_being_sent(write_config, relay) -> None:  # type: ignore[no-untyped-def]
    r = relay(write_config({"receiver": {"secrets": [SECRET], "max_body_bytes": 1000}}))
    # announce 10 MB and send none of it: the answer must come anyway
    with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
        s.sendall(b"POST /webhooks/notification HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 10000000\r\n"
                  b"generated-at: 1\r\nX-API-Key: " + b"a" * 64 + b"\r\n\r\n")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    assert post_signed(r.webhook, sample("failure")).status_code == 200


def test_send_signs_and_posts_to_a_running_relay(write_config, relay) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config()
    r = relay(cfg)
    result = run_cli("-c", str(cfg), "send", "success", "--url", r.webhook)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("200 OK") and '"accepted"' in result.stdout
    bad = run_cli("-c", str(cfg), "send", "success", "--url", r.webhook, "--secret", "wrong")
    assert bad.returncode == 1 and bad.stdout.startswith("401")
    assert SECRET not in bad.stdout
