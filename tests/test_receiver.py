"""A real gunicorn receiving signed requests: every answer, and what is committed."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import requests

from suki_relay.dryrun import sample
from suki_relay.signing import signed_headers
from suki_relay.store import EventFilter
from suki_relay.testing import SECRET, post_signed, unique_body, wait_until

from .conftest import open_test_store


def stored(config_file: Path, store_url: str):  # type: ignore[no-untyped-def]
    return open_test_store(store_url, config_file.parent)


def test_receiving_answers_precisely(write_config, relay, store_url) -> None:  # type: ignore[no-untyped-def]
    """One relay, every kind of request; only the good ones are committed."""
    cfg = write_config({"actions": {"fwd": {"type": "http", "url": "http://127.0.0.1:9/x"}},
                        "rules": [{"name": "failures", "when": {"status": "failure"},
                                   "do": ["fwd"]}]})
    r = relay(cfg)
    url = r.webhook
    body = unique_body("failure")

    ok = post_signed(url, body)
    assert ok.status_code == 200 and ok.json()["status"] == "accepted"
    event_id = ok.json()["event_id"]

    store = stored(cfg, store_url)
    event = store.event(event_id)
    assert event is not None and event.body == body
    assert [d.delivery.action for d in event.deliveries] == ["fwd"]
    assert event.event.rules == ["failures"]

    # the same request twice is accepted once
    headers = signed_headers(SECRET, body)
    first = requests.post(url, data=body, headers=headers, timeout=10)
    again = requests.post(url, data=body, headers=headers, timeout=10)
    assert first.json()["status"] == "accepted"
    assert again.status_code == 200 and again.json() == {"status": "duplicate",
                                                          "event_id": first.json()["event_id"]}
    assert len(store.deliveries(event_id=first.json()["event_id"])) == 1

    def answer(**kw) -> requests.Response:  # type: ignore[no-untyped-def]
        return requests.post(url, timeout=10, **kw)

    good = signed_headers(SECRET, body)
    cases = {
        "wrong method": (requests.get(url, timeout=10), 405, "method_not_allowed"),
        "unknown path": (requests.post(r.url + "/webhook", data=body, headers=good, timeout=10),
                         404, "not_found"),
        "no generated-at": (answer(data=body, headers={**good, "generated-at": ""}),
                            401, "missing_generated_at"),
        "generated-at not a number": (answer(data=body, headers={**good, "generated-at": "soon"}),
                                      400, "bad_generated_at"),
        "no signature": (answer(data=body, headers={"Content-Type": "application/json",
                                                    "generated-at": good["generated-at"]}),
                         401, "missing_signature"),
        "wrong secret": (post_signed(url, body, secret="not-the-secret"), 401, "bad_signature"),
        "tampered body": (answer(data=body.replace(b"failure", b"success"), headers=good),
                          401, "bad_signature"),
        "stale": (post_signed(url, body, now=time.time() - 3600), 401, "expired"),
        "from the future": (post_signed(url, body, now=time.time() + 3600), 401, "expired"),
        "not json": (answer(data=body, headers={**good, "Content-Type": "text/plain"}),
                     415, "unsupported_media_type"),
    }
    for name, (resp, status, reason) in cases.items():
        assert (resp.status_code, resp.json()["error"]) == (status, reason), name
        assert SECRET not in resp.text and "session_id" not in resp.text, name
        assert body.decode() not in resp.text, name
    assert cases["wrong method"][0].headers["Allow"] == "POST"

    # nothing but the two accepted requests was recorded
    assert len(store.events(EventFilter())) == 2


def test_signed_but_malformed_bodies_are_kept_and_refused(write_config, relay,
                                                          store_url) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config()
    r = relay(cfg)
    for body in (b"[1, 2, 3]", b'{"session_id": "x"}', b'{"status": 7}', b"not json at all"):
        resp = post_signed(r.webhook, body)
        assert resp.status_code == 400, body
        assert resp.json()["error"] == "malformed_payload"
    kept = stored(cfg, store_url).events(EventFilter(malformed=True))
    assert len(kept) == 4
    assert all(e.deliveries == {} for e in kept)


def test_unmatched_events_are_kept_and_reported(write_config, relay, store_url) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config({"actions": {"fwd": {"type": "http", "url": "http://127.0.0.1:9/x"}},
                        "rules": [{"name": "failures", "when": {"status": "failure"},
                                   "do": ["fwd"]}]})
    r = relay(cfg)
    body = unique_body("timeout")
    resp = post_signed(r.webhook, body)
    assert resp.status_code == 200
    event = stored(cfg, store_url).event(resp.json()["event_id"])
    assert event.event.status == "timeout" and event.event.matched is False
    assert event.deliveries == []
    wait_until(lambda: "unmatched event" in r.logs() and resp.json()["event_id"] in r.logs(),
               message="the unmatched event in the log")


def test_oversized_body_is_refused_before_it_is_read(write_config, relay) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config({"receiver": {"secrets": [SECRET], "max_body_bytes": 1000}})
    r = relay(cfg)
    # announce 10 MB and send none of it: the answer must come anyway
    with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
        s.sendall(b"POST /webhooks/notification HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 10000000\r\n"
                  b"generated-at: 1\r\nX-API-Key: " + b"a" * 64 + b"\r\n\r\n")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    big = json.dumps({"status": "failure", "pad": "x" * 2000}).encode()
    assert post_signed(r.webhook, big).status_code == 413
    assert post_signed(r.webhook, sample("failure")).status_code == 200


def test_health_and_readiness(write_config, relay) -> None:  # type: ignore[no-untyped-def]
    r = relay(write_config())
    assert requests.get(r.url + "/healthz", timeout=5).json() == {"status": "alive"}
    assert requests.get(r.url + "/readyz", timeout=5).json() == {"status": "ready"}
