"""Metrics from several gunicorn workers add up (prometheus multiprocess mode)."""

from __future__ import annotations

import pytest
import requests

from suki_relay import protocol
from suki_relay.testing import SECRET, post_signed, unique_body, wait_until

from ..conftest import http_action


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_metrics_match_what_was_sent(write_config, relay, sink, store_url) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    cfg = write_config({"actions": {"ehr": http_action(target.url)},
                        "rules": [{"name": "all", "do": ["ehr"]}]})
    r = relay(cfg, workers=2)
    body = unique_body()
    for _ in range(6):
        post_signed(r.webhook, unique_body())
    requests.post(r.webhook, data=body, headers={"Content-Type": "application/json",
                                                 "generated-at": "1", "X-API-Key": "0" * 64},
                  timeout=5)
    assert post_signed(r.webhook, body).status_code == 200
    headers = protocol.signed_headers(SECRET, body)
    for _ in range(2):
        requests.post(r.webhook, data=body, headers=headers, timeout=5)
    wait_until(lambda: len(target.received) == 8, message="8 deliveries")

    def scraped() -> str:
        return requests.get(r.url + "/metrics", timeout=5).text

    wait_until(lambda: metric(scraped(), "suki_relay_delivery_attempts_total", outcome="ok") == 8,
               message="delivery metrics")

    def queue_depth(text: str) -> tuple[float, float]:
        return (metric(text, "suki_relay_deliveries", state="done"),
                metric(text, "suki_relay_deliveries", state="pending"))

    # read from the store at most every 2 s by each worker
    wait_until(lambda: queue_depth(scraped()) == (8, 0), interval=0.5, message="queue depth")
    text = scraped()
    assert metric(text, "suki_relay_requests_total", outcome="accepted") == 8
    assert metric(text, "suki_relay_requests_total", outcome="duplicate") == 1
    assert metric(text, "suki_relay_requests_total", outcome="bad_signature") == 1
    assert metric(text, "suki_relay_events_total", status="failure") == 8
    assert metric(text, "suki_relay_ack_seconds_count") == 10
    assert "20965414" not in text and "29de56bc" not in text  # no payload values
