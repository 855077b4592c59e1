"""A prune, however short the age asked for, never lets a captured request run again."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from suki_relay.protocol import signed_headers
from suki_relay.store import NewEvent
from suki_relay.testing import SECRET, post_signed, unique_body, wait_until

from ..conftest import http_action, open_test_store, run_cli

OLD_EVENTS = 20_000


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # not about the store
def test_prune_keeps_events_inside_the_replay_window(write_config, relay, sink) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    cfg = write_config({"actions": {"ehr": http_action(target.url)},
                        "rules": [{"name": "all", "do": ["ehr"]}]})
    r = relay(cfg)
    body = unique_body("failure")
    captured = signed_headers(SECRET, body)
    first = requests.post(r.webhook, data=body, headers=captured, timeout=10)
    assert first.json()["status"] == "accepted"
    wait_until(lambda: len(target.received) == 1, message="the delivery")
    time.sleep(1.2)

    pruned: subprocess.CompletedProcess[str] = run_cli("-c", str(cfg), "prune", "--older-than",
                                                       "1s", "--json")
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["deleted_events"] == 0

    again = requests.post(r.webhook, data=body, headers=captured, timeout=10)  # a replay
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "event_id": first.json()["event_id"]}
    time.sleep(1)  # a second delivery, if planned, would have reached this fast target by now
    assert len(target.received) == 1


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # SQLite: one write lock
def test_a_long_prune_lets_notifications_in_as_it_goes(write_config, relay,
                                                       tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A prune of many events (retention.days set for the first time on a relay that ran
    for months) takes the write lock a batch at a time: a notification sent while it runs
    is committed between two batches, not after the last one (in one transaction, every
    notification waited out the whole prune, and Suki gives up on a slow answer)."""
    cfg = write_config()
    old = time.time() - 90 * 86400
    store = open_test_store(f"sqlite:///{tmp_path / 'relay.db'}")
    for start in range(0, OLD_EVENTS, 1000):
        store.record([NewEvent(f"old:{n}", b'{"status": "timeout"}', n, "timeout", None, None,
                               False, [], [], received_at=old)
                      for n in range(start, start + 1000)])
    store.close()
    r = relay(cfg)

    def left() -> int:  # old events not pruned yet, as any reader sees them
        with contextlib.closing(sqlite3.connect(tmp_path / "relay.db", timeout=10)) as db:
            return int(db.execute("SELECT count(*) FROM events WHERE received_at < ?",
                                  (old + 1,)).fetchone()[0])

    log = (tmp_path / "prune.log").open("wb")
    prune = subprocess.Popen([sys.executable, "-m", "suki_relay.cli.main", "-c", str(cfg),
                              "prune", "--older-than", "30d"], stdout=log, stderr=log)
    log.close()
    during = 0  # notifications committed after the prune began and before it ended
    try:
        deadline = time.monotonic() + 60
        while prune.poll() is None and time.monotonic() < deadline:
            before = left()
            answer = post_signed(r.webhook, unique_body(), timeout=10)
            assert answer.status_code == 200, answer.text
            during += before < OLD_EVENTS and left() > 0
    finally:
        if prune.poll() is None:
            prune.kill()
        prune.wait(10)
    assert prune.returncode == 0, (tmp_path / "prune.log").read_text()
    assert left() == 0
    assert during > 0
