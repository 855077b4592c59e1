"""Several nodes on one PostgreSQL: failover after kill -9. (A database restart is in
test_spool_outage.py, on a private server: never the machine's shared one.)"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from suki_relay.testing import SECRET, Reply, post_signed, unique_body, wait_until

from .conftest import FAST_DELIVERY, http_action, open_test_store


def cluster_config(tmp_path: Path, pg_url: str, target: str, name: str = "actions.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({
        "receiver": {"secrets": [SECRET]}, "store": pg_url, "delivery": FAST_DELIVERY,
        "actions": {"target": http_action(target, max_concurrency=16, timeout_seconds=20)},
        "rules": [{"name": "all", "do": ["target"]}],
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
