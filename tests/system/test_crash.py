"""What a process is needed for: kill -9 and SIGTERM mid-delivery, a separate worker
process. Nothing is lost: what was acknowledged is delivered after the restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

from suki_relay.testing import Reply, post_signed, unique_body, wait_until

from ..conftest import http_action, open_test_store


def one_rule(action: dict) -> dict:  # type: ignore[type-arg]
    return {"actions": {"target": action}, "rules": [{"name": "all", "do": ["target"]}]}


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
    first.kill9()  # back once every worker is gone
    assert first.proc.returncode == -signal.SIGKILL
    stall["on"] = False
    relay(cfg)
    store = open_test_store(store_url, cfg.parent)
    wait_until(lambda: all([d.state for d in store.deliveries(event_id=e)] == ["done"]
                           for e in sent), timeout=30,
               message="every delivery done after the restart")
    # each delivery reached the target twice, with the same key: in flight when killed,
    # then once more from the restarted relay
    tried = Counter(g.headers["Idempotency-Key"] for g in target.received)
    assert len(tried) == 5 and set(tried.values()) == {2}
    for event_id in sent:
        (d,) = store.event(event_id).deliveries
        assert [a.outcome for a in d.attempts] == ["lost", "ok"]


def test_sigterm_mid_delivery_loses_nothing(write_config, relay, sink, store_url) -> None:  # type: ignore[no-untyped-def]
    quick = sink(default=Reply(200, delay=1))  # finishes within shutdown_seconds (5)
    stuck = sink(handler=lambda got: Reply(200, delay=30 if len(stuck.received) == 1 else 0))
    cfg = write_config({"actions": {"quick": http_action(quick.url),
                                    "stuck": http_action(stuck.url, timeout_seconds=40)},
                        "rules": [{"name": "all", "do": ["quick", "stuck"]}]})
    r = relay(cfg)
    event_id = post_signed(r.webhook, unique_body()).json()["event_id"]
    wait_until(lambda: quick.received and stuck.received, message="both deliveries in flight")
    assert r.stop(timeout=30) == 0
    store = open_test_store(store_url, cfg.parent)
    states = {d.action: d.state for d in store.deliveries(event_id=event_id)}
    assert states == {"quick": "done", "stuck": "pending"}  # finished, or handed back
    assert "released unfinished deliveries" in r.logs()
    relay(cfg)  # the next start picks it up at once, without waiting for a lease
    wait_until(lambda: len(stuck.received) == 2, message="the handed-back delivery")
    wait_until(lambda: {d.state for d in store.deliveries(event_id=event_id)} == {"done"},
               message="done")


def test_receive_only_nodes_and_a_separate_worker(write_config, relay, sink, store_url) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    cfg = write_config(one_rule(http_action(target.url)))
    r = relay(cfg, env={"SUKI_RELAY_DELIVER": "0"})
    event_id = post_signed(r.webhook, unique_body()).json()["event_id"]
    time.sleep(1)
    assert target.received == []
    worker = subprocess.Popen([sys.executable, "-m", "suki_relay.cli.main", "-c", str(cfg), "worker"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: target.received, message="the worker's delivery")
        store = open_test_store(store_url, cfg.parent)
        wait_until(lambda: [d.state for d in store.deliveries(event_id=event_id)] == ["done"],
                   message="done")
    finally:
        os.kill(worker.pid, signal.SIGTERM)
        assert worker.wait(20) == 0
