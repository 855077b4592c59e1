"""Delivery in process (the app and its delivery threads, requests through the test
Client) to real local HTTP targets: retries, limits, templates, acknowledgement.
Crashes, signals and real gunicorn processes: tests/system/."""

from __future__ import annotations

import json

from suki_relay import protocol
from suki_relay.testing import Reply, unique_body, wait_until

from .conftest import http_action, old_events


def one_rule(action: dict, **more) -> dict:  # type: ignore[no-untyped-def]
    return {"actions": {"target": action, **more.pop("actions", {})},
            "rules": [{"name": "all", "do": ["target"]}], **more}


def states(relay, event_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [d.state for d in relay.store.deliveries(event_id=event_id)]


def test_forwards_the_raw_body_with_an_idempotency_key(write_config, local_relay, sink) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    r = local_relay(write_config(one_rule(http_action(
        target.url + "/hooks/suki", headers={"X-Session": "{{ event.session_id }}"}))))
    body = unique_body("failure")
    event_id = r.accept(body)
    got = wait_until(lambda: target.received, message="the delivery")[0]
    assert got.body == body and got.path == "/hooks/suki"
    assert got.headers["Idempotency-Key"].startswith("dlv_")
    assert got.headers["X-Suki-Relay-Event"] == event_id
    assert got.headers["X-Session"] == json.loads(body)["session_id"]
    wait_until(lambda: states(r, event_id) == ["done"], message="done")
    (d,) = r.store.event(event_id).deliveries
    assert [a.outcome for a in d.attempts] == ["ok"]


def test_a_template_that_cannot_render_fails_at_once_without_sending(write_config, local_relay,
                                                                     sink) -> None:  # type: ignore[no-untyped-def]
    """A name the event does not have is a mistake in the config, not a transient failure:
    the delivery fails for good at its first attempt (Jinja is imported only with the first
    template, and its errors are still told apart from a bug in an action)."""
    target = sink()
    r = local_relay(write_config(one_rule(http_action(
        target.url, headers={"X-Missing": "{{ event.no_such_field }}"},
        retry={"initial_seconds": 0.05, "max_seconds": 0.1, "max_attempts": 5}))))
    event_id = r.accept(unique_body())
    wait_until(lambda: states(r, event_id) == ["failed"], message="failed")
    (d,) = r.store.event(event_id).deliveries
    assert [a.outcome for a in d.attempts] == ["failed"]
    assert d.attempts[0].error is not None and d.attempts[0].error.startswith("template error")
    assert target.received == []


def test_flapping_target_is_retried_until_it_answers(write_config, local_relay, sink) -> None:  # type: ignore[no-untyped-def]
    target = sink(replies=[Reply(503), Reply(500), Reply(408)], default=Reply(200))
    quick = {"initial_seconds": 0.05, "max_seconds": 0.2, "max_attempts": 5}
    r = local_relay(write_config(one_rule(http_action(target.url, retry=quick))))
    event_id = r.accept(unique_body())
    wait_until(lambda: states(r, event_id) == ["done"], message="done")
    (d,) = r.store.event(event_id).deliveries
    assert [(a.outcome, a.http_status) for a in d.attempts][:3] == [
        ("retry", 503), ("retry", 500), ("retry", 408)]
    assert [a.outcome for a in d.attempts] == ["retry", "retry", "retry", "ok"]
    assert d.attempts[-1].http_status == 200  # a success records the target's status too
    keys = {g.headers["Idempotency-Key"] for g in target.received}
    assert len(target.received) == 4 and keys == {d.delivery.id}


def test_permanent_refusal_and_exhausted_retries_fail_for_good(write_config, local_relay,
                                                               sink) -> None:  # type: ignore[no-untyped-def]
    refusing = sink(default=Reply(400, b"bad request"))
    down = sink(default=Reply(503))
    r = local_relay(write_config({
        "actions": {
            "refusing": http_action(refusing.url),
            "down": http_action(down.url, retry={"initial_seconds": 0.1, "max_seconds": 0.2,
                                                  "max_attempts": 3}),
        },
        "rules": [{"name": "all", "do": ["refusing", "down"]}],
    }))
    event_id = r.accept(unique_body())
    wait_until(lambda: states(r, event_id) == ["failed", "failed"], message="failed")
    by_action = {d.delivery.action: d.delivery for d in r.store.event(event_id).deliveries}
    assert by_action["refusing"].attempts == 1
    assert "answered 400" in by_action["refusing"].last_error
    assert by_action["down"].attempts == 3
    assert "gave up after 3 tries" in by_action["down"].last_error
    assert len(refusing.received) == 1 and len(down.received) == 3


def test_retry_after_is_honoured(write_config, local_relay, sink) -> None:  # type: ignore[no-untyped-def]
    target = sink(replies=[Reply(429, headers={"Retry-After": "2"})])
    r = local_relay(write_config(one_rule(http_action(target.url))))
    r.accept(unique_body())
    first, second = wait_until(lambda: target.received[:2] if len(target.received) >= 2 else None,
                               message="the retry")
    assert second.at - first.at >= 2.0  # not sooner than the target asked (later is fine)


def test_acknowledgement_does_not_wait_for_a_stalled_target(write_config, local_relay,
                                                            sink) -> None:  # type: ignore[no-untyped-def]
    target = sink(default=Reply(200, delay=60))
    r = local_relay(write_config(one_rule(http_action(target.url, timeout_seconds=60))))
    answers = [r.post_signed(unique_body()) for _ in range(10)]
    wait_until(lambda: target.received, message="a delivery to start")
    answers += [r.post_signed(unique_body()) for _ in range(10)]
    # every notification was acknowledged while the target still held every delivery
    assert [a.status_code for a in answers] == [200] * 20
    assert target.completed == 0
    target.release()


def test_max_concurrency_protects_a_fragile_target(write_config, local_relay, sink) -> None:  # type: ignore[no-untyped-def]
    target = sink(default=Reply(200, delay=0.15))
    r = local_relay(write_config(one_rule(http_action(target.url, max_concurrency=2))))
    for _ in range(8):
        r.accept(unique_body())
    wait_until(lambda: target.completed == 8, timeout=30, message="8 deliveries")
    assert target.max_active == 2


def test_two_relays_on_one_store_share_the_limit(write_config, local_relay, sink) -> None:  # type: ignore[no-untyped-def]
    """max_concurrency holds across every process delivering from one store."""
    target = sink(default=Reply(200, delay=0.15))
    cfg = write_config(one_rule(http_action(target.url, max_concurrency=2)))
    a, b = local_relay(cfg), local_relay(cfg)
    for i in range(8):
        (a if i % 2 else b).accept(unique_body())
    wait_until(lambda: target.completed == 8, timeout=30, message="8 deliveries")
    assert target.max_active == 2


def test_body_template_and_signature_for_the_next_hop(write_config, local_relay, sink) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    r = local_relay(write_config(one_rule(http_action(
        target.url, sign_secret="next-hop-secret",
        body='{"session": "{{ event.session_id }}", "event": "{{ event_id }}", '
             '"attempt": {{ attempt }}}'))))
    body = unique_body()
    event_id = r.accept(body)
    got = wait_until(lambda: target.received, message="delivery")[0]
    assert got.json() == {"session": json.loads(body)["session_id"], "event": event_id,
                          "attempt": 1}
    assert protocol.matches(["next-hop-secret"], got.headers["generated-at"], got.body,
                           got.headers["X-API-Key"])


def test_retention_prunes_finished_events_when_delivery_starts(write_config, local_relay,
                                                               sink) -> None:  # type: ignore[no-untyped-def]
    target = sink(default=Reply(503))
    never_gives_up = {"initial_seconds": 0.2, "max_seconds": 1, "max_attempts": 1000}
    cfg = write_config({"actions": {"ehr": http_action(target.url, retry=never_gives_up)},
                        "rules": [{"name": "failures", "when": {"status": "failure"},
                                   "do": ["ehr"]}],
                        "retention": {"days": 0.3 / 86400}})  # 0.3 seconds
    receiving = local_relay(cfg, deliver=False)
    pending, finished = old_events(receiving.store)  # finished: nothing to deliver
    recent = receiving.accept(unique_body("timeout"))
    wait_until(lambda: receiving.store.stats().oldest_pending_age_seconds > 0.5,
               message="the events older than the retention")
    delivering = local_relay(cfg)  # prunes when it starts, then hourly
    wait_until(lambda: delivering.store.event(finished) is None, message="the prune")
    assert delivering.store.event(pending) is not None
    assert delivering.store.event(recent) is not None  # inside the replay window: kept
