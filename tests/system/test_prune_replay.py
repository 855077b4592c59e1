"""A prune, however short the age asked for, never lets a captured request run again."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import requests

from suki_relay.protocol import signed_headers
from suki_relay.testing import SECRET, unique_body, wait_until

from ..conftest import http_action, run_cli


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
