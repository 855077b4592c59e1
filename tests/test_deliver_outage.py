"""Delivering through a database outage (on a private database: never the shared one)."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from suki_relay.testing import SECRET, Reply, unique_body, wait_until

from .conftest import FAST_DELIVERY, http_action, open_test_store


def test_an_attempt_under_way_when_the_database_goes_is_not_made_again(
        tmp_path: Path, private_db, local_relay, sink) -> None:  # type: ignore[no-untyped-def]
    """The target answers while the database is down for longer than the lease: the
    attempt is recorded once the database is back, and the target is not called again."""
    target = sink(default=Reply(200, delay=1.0))
    cfg = tmp_path / "actions.yaml"
    cfg.write_text(yaml.safe_dump({
        "receiver": {"secrets": [SECRET]}, "store": private_db.url, "delivery": FAST_DELIVERY,
        "actions": {"target": http_action(target.url)},
        "rules": [{"name": "all", "do": ["target"]}]}))
    relay = local_relay(cfg)
    event_id = relay.accept(unique_body())
    wait_until(lambda: target.active == 1, message="the attempt under way")
    private_db.down()
    time.sleep(FAST_DELIVERY["lease_seconds"] + 1.5)  # the lease runs out meanwhile
    private_db.up()
    store = open_test_store(private_db.url)
    wait_until(lambda: [d.state for d in store.deliveries()] == ["done"], timeout=30,
               message="the attempt recorded")
    time.sleep(1.0)  # a second attempt, if one were made, would be under way by now
    assert len(target.received) == 1
    (delivery,) = store.event(event_id).deliveries
    assert [a.outcome for a in delivery.attempts] == ["ok"]
