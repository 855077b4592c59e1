"""Delivery through a real gunicorn to real local HTTP targets: retries, limits, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from suki_relay import signing
from suki_relay.testing import Reply, post_signed, unique_body, wait_until

from .conftest import http_action, open_test_store


def store_of(cfg: Path, url: str):  # type: ignore[no-untyped-def]
    return open_test_store(url, cfg.parent)


def one_rule(action: dict, **more) -> dict:  # type: ignore[no-untyped-def]
    return {"actions": {"target": action, **more.pop("actions", {})},
            "rules": [{"name": "all", "do": ["target"]}], **more}


def delivery_states(store, event_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [d.state for d in store.deliveries(event_id=event_id)]


def test_forwards_the_raw_body_with_an_idempotency_key(write_config, relay, sink,
                                                        store_url) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    cfg = write_config(one_rule(http_action(target.url + "/hooks/suki",
                                            headers={"X-Session": "{{ event.session_id }}"})))
    r = relay(cfg)
    body = unique_body("failure")
    event_id = post_signed(r.webhook, body).json()["event_id"]
    got = wait_until(lambda: target.received, message="the delivery")[0]
    assert got.body == body
    assert got.path == "/hooks/suki"
    assert got.headers["Idempotency-Key"].startswith("dlv_")
    assert got.headers["X-Suki-Relay-Event"] == event_id
    assert got.headers["X-Session"] == json.loads(body)["session_id"]
    store = store_of(cfg, store_url)
    wait_until(lambda: delivery_states(store, event_id) == ["done"], message="done")
    (d,) = store.event(event_id).deliveries
    assert [a.outcome for a in d.attempts] == ["ok"]


def test_flapping_target_is_retried_until_it_answers(write_config, relay, sink,
                                                     store_url) -> None:  # type: ignore[no-untyped-def]
    target = sink(replies=[Reply(503), Reply(500), Reply(408)], default=Reply(200))
    cfg = write_config(one_rule(http_action(target.url)))
    r = relay(cfg)
    event_id = post_signed(r.webhook, unique_body()).json()["event_id"]
    store = store_of(cfg, store_url)
    wait_until(lambda: delivery_states(store, event_id) == ["done"], message="done")
    (d,) = store.event(event_id).deliveries
    assert [(a.outcome, a.http_status) for a in d.attempts] == [
        ("retry", 503), ("retry", 500), ("retry", 408), ("ok", None)]
    keys = {g.headers["Idempotency-Key"] for g in target.received}
    assert len(target.received) == 4 and len(keys) == 1


def test_permanent_refusal_and_exhausted_retries_fail_for_good(write_config, relay, sink,
                                                               store_url) -> None:  # type: ignore[no-untyped-def]
    refusing = sink(default=Reply(400, b"bad request"))
    down = sink(default=Reply(503))
    cfg = write_config({
        "actions": {
            "refusing": http_action(refusing.url),
            "down": http_action(down.url, retry={"initial_seconds": 0.1, "max_seconds": 0.2,
                                                  "max_attempts": 3}),
        },
        "rules": [{"name": "all", "do": ["refusing", "down"]}],
    })
    r = relay(cfg)
    event_id = post_signed(r.webhook, unique_body()).json()["event_id"]
    store = store_of(cfg, store_url)
    wait_until(lambda: delivery_states(store, event_id) == ["failed", "failed"], message="failed")
    by_action = {d.delivery.action: d.delivery for d in store.event(event_id).deliveries}
    assert by_action["refusing"].attempts == 1
    assert "answered 400" in by_action["refusing"].last_error
    assert by_action["down"].attempts == 3
    assert "gave up after 3 tries" in by_action["down"].last_error
    assert len(refusing.received) == 1 and len(down.received) == 3


def test_retry_after_is_honoured(write_config, relay, sink, store_url) -> None:  # type: ignore[no-untyped-def]
    target = sink(replies=[Reply(429, headers={"Retry-After": "2"})])
    cfg = write_config(one_rule(http_action(target.url)))
    r = relay(cfg)
    post_signed(r.webhook, unique_body())
    first, second = wait_until(lambda: target.received[:2] if len(target.received) >= 2 else None,
                               message="the retry")
    assert second.at - first.at >= 2.0


def test_acknowledgement_does_not_wait_for_a_stalled_target(write_config, relay, sink,
                                                            store_url) -> None:  # type: ignore[no-untyped-def]
    target = sink(default=Reply(200, delay=60))
    cfg = write_config(one_rule(http_action(target.url, timeout_seconds=60)))
    r = relay(cfg)
    answers = [post_signed(r.webhook, unique_body()) for _ in range(10)]
    wait_until(lambda: target.received, message="a delivery to start")
    answers += [post_signed(r.webhook, unique_body()) for _ in range(10)]
    # every notification was acknowledged while the target still held every delivery
    assert [a.status_code for a in answers] == [200] * 20
    assert target.completed == 0
    target.release()


def test_max_concurrency_protects_a_fragile_target(write_config, relay, sink,
                                                   store_url) -> None:  # type: ignore[no-untyped-def]
    target = sink(default=Reply(200, delay=0.3))
    cfg = write_config(one_rule(http_action(target.url, max_concurrency=2)))
    r = relay(cfg)
    for _ in range(8):
        post_signed(r.webhook, unique_body())
    wait_until(lambda: target.completed == 8, timeout=30, message="8 deliveries")
    assert target.max_active == 2


def test_body_template_and_signature_for_the_next_hop(write_config, relay, sink,
                                                      store_url) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    cfg = write_config(one_rule(http_action(
        target.url, sign_secret="next-hop-secret",
        body='{"session": "{{ event.session_id }}", "event": "{{ event_id }}", '
             '"attempt": {{ attempt }}}')))
    r = relay(cfg)
    body = unique_body()
    event_id = post_signed(r.webhook, body).json()["event_id"]
    got = wait_until(lambda: target.received, message="delivery")[0]
    assert got.json() == {"session": json.loads(body)["session_id"], "event": event_id,
                          "attempt": 1}
    assert signing.matches(["next-hop-secret"], got.headers["generated-at"], got.body,
                           got.headers["X-API-Key"])


def test_kill_9_mid_delivery_loses_nothing(write_config, relay, sink, store_url) -> None:  # type: ignore[no-untyped-def]
    """Deliveries in flight when every relay process is killed are delivered after restart."""
    stall = {"on": True}

    def handler(got):  # type: ignore[no-untyped-def]
        return Reply(200, delay=30 if stall["on"] else 0)

    target = sink(handler=handler)
    cfg = write_config(one_rule(http_action(target.url, timeout_seconds=40, max_concurrency=8)))
    first = relay(cfg)
    sent = [post_signed(first.webhook, unique_body()).json()["event_id"] for _ in range(5)]
    wait_until(lambda: len(target.received) >= 5, message="all 5 deliveries in flight")
    first.kill9()
    stall["on"] = False
    second = relay(cfg)
    store = store_of(cfg, store_url)
    wait_until(lambda: all(delivery_states(store, e) == ["done"] for e in sent), timeout=30,
               message="every delivery done after the restart")
    keys = [g.headers["Idempotency-Key"] for g in target.received if g.at]
    assert len(set(keys)) == 5
    assert second.proc is not None
    for event_id in sent:
        (d,) = store.event(event_id).deliveries
        assert [a.outcome for a in d.attempts] == ["lost", "ok"]


def test_plain_gunicorn_receives_and_delivers(write_config, relay, sink, store_url) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    cfg = write_config(one_rule(http_action(target.url)))
    r = relay(cfg, plain_gunicorn=True)
    post_signed(r.webhook, unique_body())
    wait_until(lambda: target.received, message="delivery via gunicorn suki_relay.wsgi:app")


def test_receive_only_nodes_and_a_separate_worker(write_config, relay, sink, store_url,
                                                  tmp_path) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    cfg = write_config(one_rule(http_action(target.url)))
    r = relay(cfg, env={"SUKI_RELAY_DELIVER": "0"})
    event_id = post_signed(r.webhook, unique_body()).json()["event_id"]
    time.sleep(1)
    assert target.received == []
    worker = subprocess.Popen([sys.executable, "-m", "suki_relay.cli", "-c", str(cfg), "worker"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: target.received, message="the worker's delivery")
        store = store_of(cfg, store_url)
        wait_until(lambda: delivery_states(store, event_id) == ["done"], message="done")
    finally:
        os.kill(worker.pid, signal.SIGTERM)
        assert worker.wait(20) == 0
