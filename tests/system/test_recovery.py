"""Gap detection in a real `suki-relay serve` (two workers) against a Suki stand-in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from suki_relay.testing import SukiStandIn, post_signed, unique_body, wait_until

from ..conftest import open_test_store
from ..test_recovery import ENCOUNTER, events_of, write_config


@pytest.fixture
def suki() -> Iterator[SukiStandIn]:
    with SukiStandIn(default_status=None) as fake:
        yield fake


def test_gap_detection_in_a_running_relay(tmp_path: Path, relay: Any, sink: Any,
                                          suki: SukiStandIn) -> None:
    """A success event lists two other sessions that never notified: the completed one is
    recovered after the grace; the running one is asked again until it completes."""
    suki.statuses.update({"gap-done": "completed", "gap-later": "running"})
    target = sink()
    config_file = write_config(tmp_path, suki, sink=target, recovery={
        "grace_seconds": 1, "check_every_seconds": 1, "give_up_after_hours": 1})
    proc = relay(config_file)
    body = unique_body("success", encounter_id=ENCOUNTER)
    own = json.loads(body)["session_id"]
    payload = json.loads(body)
    payload["sessions"] = [own, "gap-done", "gap-later"]
    assert post_signed(proc.webhook, json.dumps(payload).encode()).status_code == 200

    store = open_test_store(f"sqlite:///{tmp_path / 'relay.db'}")
    wait_until(lambda: events_of(store, session_id="gap-done"), 30,
               message="gap-done recovered")
    wait_until(lambda: suki.asked.get("gap-later", 0) >= 2, 30,
               message="the running session asked again")
    assert events_of(store, session_id="gap-later") == []

    def scraped() -> str:
        return requests.get(proc.url + "/metrics", timeout=5).text

    # the store's figures are read at most every 2 s by each worker
    wait_until(lambda: "suki_relay_sessions_missing 1.0" in scraped(), interval=0.5,
               message="the missing session in the metrics")

    suki.statuses["gap-later"] = "completed"
    wait_until(lambda: events_of(store, session_id="gap-later"), 30,
               message="gap-later recovered once completed")
    [done] = events_of(store, session_id="gap-done")
    assert done["recovered"] and done["encounter_id"] == ENCOUNTER
    wait_until(lambda: (ENCOUNTER, "gap-later") in {
        (p.parent.parent.name, p.parent.name)
        for p in (tmp_path / "notes").glob("*/*/contents.json")}, message="notes saved")
    assert suki.asked["gap-done"] == 1
    assert own not in suki.asked  # the event's own session is never checked
    assert 'suki_relay_recovered_sessions_total{status="completed"} 2.0' in scraped()
    wait_until(lambda: "suki_relay_sessions_missing 0.0" in scraped(), interval=0.5,
               message="no missing session left in the metrics")
    logs = proc.logs()
    assert "session recovered" in logs and "PHI-NOTE-TEXT" not in logs
