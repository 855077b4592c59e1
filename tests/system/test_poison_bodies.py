"""Signed bodies the store cannot take as parsed, sent among good ones to a real gunicorn:
each poison body is accepted (ids stored in a safe form) or kept as malformed, and never
fails a good one sharing its group commit. A signed body with NaN or Infinity (not JSON,
but what Python's json module writes) is accepted, stored, routed, rendered
and delivered as sent."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from suki_relay.store import EventFilter
from suki_relay.testing import post_signed, unique_body, wait_until

from ..conftest import http_action, open_test_store

DEEP = 100_000  # far past the recursion limit
POISON = [
    b'{"status": "failure", "session_id": "\\ud800", "encounter_id": "E\\udfff1"}',
    b'{"status": "fail\\ud800ure", "session_id": "s-surrogate-status"}',
    b'{"status": "failure", "session_id": "nul\\u0000here", "encounter_id": "\\u0000"}',
    b'{"status": "fail\\u0000", "session_id": "s-nul-status"}',
    b'{"status": "failure", "session_id": "line\\nbreak"}',
    b'{"status": "failure", "x": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    b"[" * DEEP + b"]" * DEEP,
    b'{"status": "failure", "n": 1' + b"0" * 5000 + b"}",  # past int's digit limit
]


def test_poison_bodies_among_good_ones(write_config, relay, sink, store_url) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    cfg: Path = write_config({"actions": {"ehr": http_action(target.url)},
                              "rules": [{"name": "failures", "when": {"status": "failure"},
                                         "do": ["ehr"]}]})
    r = relay(cfg, workers=2, threads=8)
    good = [unique_body("failure") for _ in range(40)]
    bodies = [*good, *POISON * 3]
    bodies = [b for pair in zip(bodies[::2], bodies[1::2], strict=False) for b in pair]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda b: post_signed(r.webhook, b, timeout=30), bodies))
    for body, answer in zip(bodies, answers, strict=True):
        assert answer.status_code < 500, (answer.status_code, answer.text[:200])
        if body in good:
            assert answer.status_code == 200 and answer.json()["status"] == "accepted"
        elif answer.status_code != 200:
            assert (answer.status_code, answer.json()["error"]) == (400, "malformed_payload")
    accepted = {a.json()["event_id"] for b, a in zip(bodies, answers, strict=True)
                if b in good}
    wait_until(lambda: accepted <= {g.headers["X-Suki-Relay-Event"] for g in target.received},
               timeout=30, message="every good event delivered")

    store = open_test_store(store_url, cfg.parent)
    events = store.events(EventFilter(limit=1000))
    assert len(events) == len(good) + 3 * len(POISON)  # every request kept
    by_session = {e.session_id: e for e in events}
    assert by_session["\\ud800"].encounter_id == "E\\udfff1"  # kept, in a safe form
    assert by_session["nul\\u0000here"].status == "failure"
    assert by_session["line\nbreak"].status == "failure"
    assert by_session["s-surrogate-status"].status == "fail\\ud800ure"
    # the accepted poison bodies that match a rule are delivered too, raw bytes unchanged
    wait_until(lambda: {POISON[0], POISON[2]} <= {g.body for g in target.received},
               timeout=30, message="the accepted poison bodies delivered")
    assert sum(e.malformed for e in events) == 3 * 3  # too deep (twice), too many digits
    assert "Traceback" not in r.logs()


NON_FINITE = (b'{"status": "success", "session_id": "s-non-finite", "encounter_id": "E-1", '
              b'"sessions": [NaN, Infinity, -Infinity], "additional_info": {"specialty": NaN}}')


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
def test_a_signed_body_with_nan_is_accepted_stored_and_delivered_as_sent(
        write_config, relay, sink, store_url) -> None:  # type: ignore[no-untyped-def]
    """The body is stored as bytes on both backends (never as JSON the database would
    parse: PostgreSQL's jsonb refuses NaN), routed on its status, forwarded verbatim, and
    its non-finite numbers render as the body wrote them."""
    raw, rendered = sink(), sink()
    cfg: Path = write_config({
        "actions": {"raw": http_action(raw.url),
                    "rendered": http_action(rendered.url, body=(
                        '{"sessions": {{ event.sessions | json }}, '
                        '"text": "{{ event.additional_info.specialty }}"}'))},
        "rules": [{"name": "notes", "when": {"status": "success"}, "do": ["raw", "rendered"]}]})
    r = relay(cfg)
    answer = post_signed(r.webhook, NON_FINITE)
    assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text
    event_id = answer.json()["event_id"]
    wait_until(lambda: raw.received and rendered.received, timeout=30,
               message="both deliveries made")
    assert [g.body for g in raw.received] == [NON_FINITE]
    assert [g.body for g in rendered.received] == [
        b'{"sessions": [NaN, Infinity, -Infinity], "text": "nan"}']
    store = open_test_store(store_url, cfg.parent)
    detail = store.event(event_id)
    assert detail is not None and detail.body == NON_FINITE
    assert (detail.event.malformed, detail.event.status, detail.event.session_id,
            detail.event.rules) == (False, "success", "s-non-finite", ["notes"])
    wait_until(lambda: {d.state for d in store.deliveries(event_id=event_id)} == {"done"},
               timeout=30, message="both deliveries recorded done")
    assert "Traceback" not in r.logs()
