"""SIGHUP under `suki-relay serve`: a broken config is refused and the relay keeps
serving; a good one takes effect."""

from __future__ import annotations

import signal
import time

import pytest
import yaml

from suki_relay.testing import post_signed, unique_body, wait_until

from ..conftest import http_action


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_sighup_with_a_broken_config_keeps_serving(write_config, relay, sink, store_url) -> None:  # type: ignore[no-untyped-def]
    first, second = sink(), sink()
    cfg = write_config({"actions": {"ehr": http_action(first.url)},
                        "rules": [{"name": "all", "do": ["ehr"]}]})
    r = relay(cfg)
    good = cfg.read_text()
    cfg.write_text(good + "\nrules: [{name: x, do: [no-such-action]}]\n")
    r.signal(signal.SIGHUP)
    wait_until(lambda: "config rejected" in r.logs() and "no-such-action" in r.logs(),
               message="the rejection, with its problems, in the log")
    time.sleep(1)
    post_signed(r.webhook, unique_body())
    wait_until(lambda: first.received, message="delivery under the old config")

    full = yaml.safe_load(good)
    full["actions"]["ehr"]["url"] = second.url
    cfg.write_text(yaml.safe_dump(full))
    r.signal(signal.SIGHUP)
    wait_until(lambda: "config reloaded" in r.logs(), message="the reload")

    def lands_on_second() -> bool:
        post_signed(r.webhook, unique_body())
        return bool(wait_until(lambda: len(first.received) + len(second.received) >= 1,
                               message="any delivery") and second.received)

    wait_until(lands_on_second, timeout=20, interval=0.5, message="the new config to take effect")
