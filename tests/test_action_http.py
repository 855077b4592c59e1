"""The http action's signature for the next hop, against a real relay downstream."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from suki_relay import signing
from suki_relay.deliver import iso
from suki_relay.errors import ConfigError
from suki_relay.store import EventFilter, open_store
from suki_relay.testing import RelayProcess, build_action, make_delivery


def test_retries_are_signed_alike_so_the_next_relay_deduplicates(tmp_path: Path) -> None:
    """A retry (the answer to the first attempt was lost, say) carries the same
    generated-at and signature, so a suki-relay downstream records the event once."""
    down = tmp_path / "downstream"
    down.mkdir()
    config = down / "actions.yaml"
    config.write_text(yaml.safe_dump({"receiver": {"secrets": ["next-hop"]},
                                      "store": "sqlite:///down.db"}), encoding="utf-8")
    with RelayProcess(config, workers=1, threads=2) as downstream:
        action = build_action("http", {"url": downstream.webhook, "sign_secret": "next-hop"},
                              tmp_path)
        delivery = make_delivery("success")
        delivery.received_at = iso(time.time() - 5)
        action.deliver(delivery)
        delivery.attempt = 2
        action.deliver(delivery)
    store = open_store("sqlite:///down.db", down)
    try:
        assert len(store.events(EventFilter())) == 1
    finally:
        store.close()


def test_a_retry_after_a_long_outage_is_signed_recently_and_alike(tmp_path: Path) -> None:
    """An event received a day ago is signed with a time under sign_window_seconds old
    (a receiver's replay window would refuse the original time), the same on each retry."""
    action = build_action("http", {"url": "http://127.0.0.1:9/", "sign_secret": "s",
                                   "sign_window_seconds": 60}, tmp_path)
    delivery = make_delivery("success")
    delivery.received_at = iso(time.time() - 86400 - 7)
    _, first, body = action.request(delivery)
    delivery.attempt = 3
    _, again, _ = action.request(delivery)
    assert (first["generated-at"], first["X-API-Key"]) == (again["generated-at"],
                                                           again["X-API-Key"])
    assert 0 <= time.time() - int(first["generated-at"]) / 1000 < 60
    assert signing.matches(["s"], first["generated-at"], body, first["X-API-Key"])


@pytest.mark.parametrize("window", [0, -1, 86400])
def test_the_sign_window_is_checked(tmp_path: Path, window: float) -> None:
    with pytest.raises(ConfigError, match="sign_window_seconds"):
        build_action("http", {"url": "http://127.0.0.1:9/", "sign_secret": "s",
                              "sign_window_seconds": window}, tmp_path)
