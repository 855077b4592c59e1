"""Probes and scrapes stay cheap: /readyz and the store's counts in /metrics are cached;
the events metric has bounded labels; generated-at takes ASCII digits only."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from suki_relay.protocol import signed_headers
from suki_relay.store import NewEvent
from suki_relay.testing import SECRET

from .conftest import open_test_store

SQLITE = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)


@SQLITE
def test_readyz_does_not_take_the_write_lock_on_every_probe(write_config, local_relay,
                                                            tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    relay = local_relay(write_config(), deliver=False)
    relay.app.ready_seconds = 3600  # long enough for this test on any machine
    client = relay.client
    assert client.get("/readyz").status_code == 200
    other = open_test_store("sqlite:///relay.db", tmp_path)
    answers: list[int] = []
    with other.exclusive():  # another writer holds the lock throughout
        probe = threading.Thread(target=lambda: answers.extend(
            client.get("/readyz").status_code for _ in range(20)), daemon=True)
        probe.start()
        probe.join(20)
    assert answers == [200] * 20


def test_metrics_read_the_store_counts_at_most_every_few_seconds(write_config,
                                                                local_relay) -> None:  # type: ignore[no-untyped-def]
    relay = local_relay(write_config(), deliver=False)
    app = relay.app
    app.store_stats.seconds = 3600
    client = relay.client
    first = client.get("/metrics").get_data(as_text=True)
    assert 'suki_relay_deliveries{state="pending"} 0.0' in first
    app.store.record([NewEvent("k", b"{}", 1, "failure", "s", None, False, ["r"], ["a"])])
    again = client.get("/metrics").get_data(as_text=True)
    assert 'suki_relay_deliveries{state="pending"} 0.0' in again  # the cached count
    app.store_stats.seconds = 0
    now = client.get("/metrics").get_data(as_text=True)
    assert 'suki_relay_deliveries{state="pending"} 1.0' in now


def _events(status: str) -> float:
    return REGISTRY.get_sample_value("suki_relay_events_total", {"status": status}) or 0.0


@SQLITE
def test_the_status_label_takes_only_statuses_the_rules_name(write_config, local_relay) -> None:  # type: ignore[no-untyped-def]
    relay = local_relay(write_config({
        "actions": {"a": {"type": "http", "url": "http://127.0.0.1:9/"}},
        "rules": [{"name": "r", "when": {"status": ["reviewed", "failure"]}, "do": ["a"]}]}),
        deliver=False)
    client = relay.client
    before = {s: _events(s) for s in ("success", "reviewed", "other", "made-up-1")}
    for status in ("success", "reviewed", "made-up-1", "made-up-2", "made-up-1"):
        body = json.dumps({"status": status, "session_id": "s"}).encode()
        resp = client.post("/webhooks/notification", data=body,
                           headers=signed_headers(SECRET, body))
        assert resp.status_code == 200
    assert _events("success") - before["success"] == 1
    assert _events("reviewed") - before["reviewed"] == 1
    assert _events("other") - before["other"] == 3
    assert _events("made-up-1") == before["made-up-1"] == 0


@SQLITE
@pytest.mark.parametrize("digits", [
    "\u0661\u0662\u0663",  # Arabic-Indic 123: \d matches it
    "\u00b2\u00b3",  # superscript 23: str.isdigit() is true, and a header can carry them
])                   # (latin-1); the refusal's skew once read them as a number: a 500
def test_generated_at_in_other_scripts_digits_is_refused(write_config, local_relay,  # type: ignore[no-untyped-def]
                                                         digits: str) -> None:
    client = local_relay(write_config(), deliver=False).client
    body = b'{"status": "failure"}'
    headers = signed_headers(SECRET, body)
    headers["generated-at"] = digits
    resp = client.post("/webhooks/notification", data=body, headers=headers)
    assert (resp.status_code, resp.json["error"]) == (400, "bad_generated_at")
