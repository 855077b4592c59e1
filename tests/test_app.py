"""The receiver's contract, in process (werkzeug's test Client): every answer, and what
is committed. The same app under a real gunicorn: tests/system/test_serve.py."""

from __future__ import annotations

import io
import json
import time

import pytest

from suki_relay.config.check import sample
from suki_relay.protocol import signed_headers
from suki_relay.store import EventFilter
from suki_relay.testing import SECRET, unique_body

FORWARD_FAILURES = {"actions": {"fwd": {"type": "http", "url": "http://127.0.0.1:9/x"}},
                    "rules": [{"name": "failures", "when": {"status": "failure"},
                               "do": ["fwd"]}]}


@pytest.fixture
def receiver(write_config, local_relay):  # type: ignore[no-untyped-def]
    """A relay that receives only (nothing is delivered: what is committed stays put)."""
    return local_relay(write_config(FORWARD_FAILURES), deliver=False)


def test_an_accepted_notification_is_committed_with_its_plan(receiver) -> None:  # type: ignore[no-untyped-def]
    body = unique_body("failure")
    resp = receiver.post_signed(body)
    assert resp.status_code == 200 and resp.json["status"] == "accepted"
    assert resp.headers["Content-Type"] == "application/json"
    event = receiver.store.event(resp.json["event_id"])
    assert event is not None and event.body == body
    assert event.event.rules == ["failures"] and event.event.status == "failure"
    assert [(d.delivery.action, d.delivery.state) for d in event.deliveries] == [("fwd", "pending")]


def test_the_same_request_twice_is_accepted_once(receiver) -> None:  # type: ignore[no-untyped-def]
    body = unique_body("failure")
    headers = signed_headers(SECRET, body)
    first = receiver.post(body, headers)
    again = receiver.post(body, headers)
    assert first.json["status"] == "accepted"
    assert again.status_code == 200
    assert again.json == {"status": "duplicate", "event_id": first.json["event_id"]}
    assert len(receiver.store.deliveries(event_id=first.json["event_id"])) == 1
    # signed again (a new generated-at) it is a new notification: Suki never retries
    assert receiver.post_signed(body, now=time.time() + 1).json["status"] == "accepted"


BODY = unique_body("failure")
GOOD = signed_headers(SECRET, BODY)

REFUSED = {
    "no generated-at": ({**GOOD, "generated-at": ""}, BODY, 401, "missing_generated_at"),
    "generated-at not a number": ({**GOOD, "generated-at": "soon"}, BODY, 400,
                                  "bad_generated_at"),
    "no signature": ({"Content-Type": "application/json", "generated-at": GOOD["generated-at"]},
                     BODY, 401, "missing_signature"),
    "signature not hex": ({**GOOD, "X-API-Key": "z" * 64}, BODY, 401, "malformed_signature"),
    "tampered body": (GOOD, BODY.replace(b"failure", b"success"), 401, "bad_signature"),
    "not json": ({**GOOD, "Content-Type": "text/plain"}, BODY, 415, "unsupported_media_type"),
    "no content type": ({k: v for k, v in GOOD.items() if k != "Content-Type"}, BODY, 415,
                        "unsupported_media_type"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_requests_get_a_precise_4xx_and_nothing_is_committed(receiver, case: str) -> None:  # type: ignore[no-untyped-def]
    headers, body, status, reason = REFUSED[case]
    fresh = {**headers}
    if headers.get("generated-at", "").isdigit():  # inside the replay window, whenever run
        fresh.update({k: v for k, v in signed_headers(SECRET, BODY).items() if k in headers
                      and headers[k] == GOOD[k]})
    resp = receiver.post(body, fresh)
    assert (resp.status_code, resp.json["error"]) == (status, reason)
    text = resp.get_data(as_text=True)
    assert SECRET not in text and BODY.decode() not in text and "session_id" not in text
    assert receiver.store.events(EventFilter()) == []


@pytest.mark.parametrize(("secret", "skew", "reason"), [
    ("not-the-secret", 0, "bad_signature"), (SECRET, -3600, "expired"), (SECRET, 3600, "expired")])
def test_wrong_secret_and_replays_outside_the_window(receiver, secret: str, skew: int,  # type: ignore[no-untyped-def]
                                                     reason: str) -> None:
    resp = receiver.post_signed(BODY, secret=secret, now=time.time() + skew)
    assert (resp.status_code, resp.json["error"]) == (401, reason)
    assert receiver.store.events(EventFilter()) == []


def test_wrong_method_and_unknown_path(receiver) -> None:  # type: ignore[no-untyped-def]
    got = receiver.client.get(receiver.path)
    assert (got.status_code, got.json["error"]) == (405, "method_not_allowed")
    assert got.headers["Allow"] == "POST"
    body = unique_body()
    lost = receiver.client.post("/webhook", data=body, headers=signed_headers(SECRET, body))
    assert (lost.status_code, lost.json["error"]) == (404, "not_found")
    assert receiver.store.events(EventFilter()) == []


@pytest.mark.parametrize("body", [b"[1, 2, 3]", b'{"session_id": "x"}', b'{"status": 7}',
                                  b"not json at all", b"\xff\xfe",
                                  pytest.param(b'{"status": "x", "n": ' + b"[" * 10**5 +
                                               b"]" * 10**5 + b"}", id="too-deep")])
def test_signed_but_malformed_bodies_are_kept_and_refused(receiver, body: bytes) -> None:  # type: ignore[no-untyped-def]
    resp = receiver.post_signed(body)
    assert (resp.status_code, resp.json["error"]) == (400, "malformed_payload")
    (kept,) = receiver.store.events(EventFilter(malformed=True))
    assert kept.id in resp.json["message"] and kept.deliveries == {}
    assert receiver.store.event(kept.id).body == body  # kept as sent, for a human to look at


def test_unmatched_events_are_kept_and_reported(receiver, relay_log) -> None:  # type: ignore[no-untyped-def]
    resp = receiver.post_signed(unique_body("timeout"))
    assert resp.status_code == 200 and resp.json["status"] == "accepted"
    event = receiver.store.event(resp.json["event_id"])
    assert event.event.status == "timeout" and event.event.matched is False
    assert event.deliveries == []
    assert ("unmatched event", {"event_id": resp.json["event_id"], "status": "timeout",
                                "deliveries": 0}) in relay_log.lines


class Unread(io.BytesIO):
    """A request body that records whether anyone read it."""

    read_at_all = False

    def read(self, size: int | None = -1) -> bytes:
        self.read_at_all = True
        return super().read(size)


def test_a_body_over_the_limit_is_refused_before_it_is_read(write_config, local_relay) -> None:  # type: ignore[no-untyped-def]
    r = local_relay(write_config({"receiver": {"secrets": [SECRET], "max_body_bytes": 1000}}),
                    deliver=False)
    announced = Unread(b"x" * 2000)
    resp = r.client.post(r.path, input_stream=announced, content_length=10_000_000,
                         headers={"Content-Type": "application/json", "generated-at": "1",
                                  "X-API-Key": "a" * 64})
    assert (resp.status_code, resp.json["error"]) == (413, "body_too_large")
    assert not announced.read_at_all
    big = json.dumps({"status": "failure", "pad": "x" * 2000}).encode()
    assert r.post_signed(big).status_code == 413
    # a body that lies about its length is cut at the limit and still refused
    lying = Unread(big)
    headers = signed_headers(SECRET, big)
    resp = r.client.post(r.path, input_stream=lying, content_length=10, headers=headers)
    assert resp.status_code in (400, 401, 413)
    assert r.post_signed(sample("failure")).status_code == 200
    assert len(r.store.events(EventFilter())) == 1


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # PostgreSQL: test_cluster
def test_a_store_that_cannot_commit_answers_503_and_accepts_nothing(receiver) -> None:  # type: ignore[no-untyped-def]
    with receiver.store.tx() as tx:  # a real failure: the tables are gone
        for table in ("attempts", "deliveries", "events"):
            tx.exec(f"DROP TABLE {table}")
    resp = receiver.post_signed(unique_body())
    assert (resp.status_code, resp.json["error"]) == (503, "store_unavailable")
    assert "event_id" not in resp.json


def test_health_and_readiness(receiver) -> None:  # type: ignore[no-untyped-def]
    assert receiver.client.get("/healthz").json == {"status": "alive"}
    ready = receiver.client.get("/readyz").json
    assert ready["status"] == "ready" and "config_rejected" not in ready
