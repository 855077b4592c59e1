"""Several nodes on one PostgreSQL: failover after kill -9, and a database restart (of a
private cluster the test starts itself)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from suki_relay.testing import (
    SECRET,
    PrivateCluster,
    Reply,
    post_signed,
    unique_body,
    wait_until,
)

from ..conftest import FAST_DELIVERY, http_action, open_test_store


def cluster_config(tmp_path: Path, pg_url: str, target: str, name: str = "actions.yaml",
                   **top_level: Any) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({
        "receiver": {"secrets": [SECRET]}, "store": pg_url, "delivery": FAST_DELIVERY,
        "actions": {"target": http_action(target, max_concurrency=16, timeout_seconds=20)},
        "rules": [{"name": "all", "do": ["target"]}], **top_level,
    }))
    return path


def test_failover_after_kill_9(tmp_path: Path, pg_url: str, relay, sink) -> None:  # type: ignore[no-untyped-def]
    target = sink(default=Reply(200, delay=0.3))
    cfg = cluster_config(tmp_path, pg_url, target.url)
    a, b = relay(cfg), relay(cfg)
    accepted: list[str] = []
    for i in range(30):
        resp = post_signed((a if i % 2 else b).webhook, unique_body())
        assert resp.status_code == 200
        accepted.append(resp.json()["event_id"])
    wait_until(lambda: target.active >= 2, message="deliveries in flight")
    a.kill9()
    killed_at = time.time()
    for _ in range(20):  # the stream goes on to the surviving node
        accepted.append(post_signed(b.webhook, unique_body()).json()["event_id"])

    store = open_test_store(pg_url)

    def all_done() -> bool:
        rows = store.deliveries(limit=1000)
        return len(rows) == len(accepted) and all(r.state == "done" for r in rows)

    wait_until(all_done, timeout=60, message="every delivery done by the surviving node")
    keys: dict[str, list[float]] = {}
    for got in target.received:
        keys.setdefault(got.headers["Idempotency-Key"], []).append(got.at)
    assert len(keys) == len(accepted)  # every accepted event reached the sink
    duplicated = {k: times for k, times in keys.items() if len(times) > 1}
    # at-least-once: only deliveries already under way at the kill may arrive twice
    assert all(min(times) <= killed_at for times in duplicated.values()), duplicated
    assert b.proc is not None and b.proc.poll() is None



def test_database_restart_mid_stream(tmp_path: Path, private_pg: PrivateCluster, relay,  # type: ignore[no-untyped-def]
                                     sink) -> None:
    pg_url = private_pg.url
    target = sink()
    # without the spool (with it, nothing is refused: test_spool_outage.py)
    cfg = cluster_config(tmp_path, pg_url + "?pool_timeout=1", target.url,
                         spool={"enabled": False})
    node = relay(cfg)
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def stream() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                resp = post_signed(node.webhook, unique_body(), timeout=15)
                results.append((resp.status_code, resp.json().get("event_id")))
            except requests.RequestException:
                results.append((0, None))
            time.sleep(0.05)

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    try:
        wait_until(lambda: len(results) >= 10, message="a stream of accepted events")
        private_pg.stop()
        during = len(results)
        wait_until(lambda: len(results) >= during + 5, timeout=60,
                   message="requests while the database is down")
        ready = requests.get(node.url + "/readyz", timeout=10)
        assert ready.status_code == 503
    finally:
        private_pg.start()
    wait_until(lambda: requests.get(node.url + "/readyz", timeout=10).status_code == 200,
               timeout=30, message="readiness after the restart")
    after = len(results)
    wait_until(lambda: sum(1 for s, _ in results[after:] if s == 200) >= 10, timeout=30,
               message="acceptance to resume by itself")
    stop.set()
    sender.join(20)

    statuses = {s for s, _ in results}
    assert 503 in statuses  # refused while it could not commit
    assert statuses <= {200, 503}
    accepted = [e for s, e in results if s == 200]
    store = open_test_store(pg_url)
    for event_id in accepted:  # every 2xx was committed
        assert store.event(event_id) is not None, event_id
    wait_until(lambda: len({g.headers["Idempotency-Key"] for g in target.received})
               == len(accepted), timeout=60, message="every accepted event delivered")
