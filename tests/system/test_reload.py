"""SIGHUP under `suki-relay serve` and under plain `gunicorn 'suki_relay.wsgi:app'`: a
broken config is refused (logged once at ERROR, reported in /readyz and a metric) and the
relay keeps serving on the last good one; a good one takes effect."""

from __future__ import annotations

import signal

import pytest
import requests
import yaml

from suki_relay.testing import post_signed, unique_body, wait_until

from ..conftest import http_action
from .test_metrics import metric

# A reload's new workers take requests only once they have booted. Gunicorn stops the old
# ones at once; under plain gunicorn a new one imports and builds the relay after it is
# forked (about 0.3 s on an idle machine, several seconds on a loaded one), and until
# then a request waits in the listen backlog (it is answered, never refused). Under
# `suki-relay serve` the master has imported the relay: its workers boot in a few ms.
BOOT = 60.0  # seconds a reload may take to be seen, however loaded the machine


def get(url: str) -> requests.Response | None:
    """The answer, or None if none came within 5 s (no worker booted yet)."""
    try:
        return requests.get(url, timeout=5)
    except requests.Timeout:
        return None


def readyz(r) -> dict[str, object] | None:  # type: ignore[no-untyped-def]
    answer = get(r.url + "/readyz")
    return answer.json() if answer is not None and answer.status_code == 200 else None


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # not about the store
@pytest.mark.parametrize("plain", [True, False], ids=["plain-gunicorn", "serve"])
def test_a_reload_with_a_broken_config_keeps_serving(write_config, relay, sink, plain) -> None:  # type: ignore[no-untyped-def]
    first, second = sink(), sink()
    cfg = write_config({"actions": {"ehr": http_action(first.url)},
                        "rules": [{"name": "all", "do": ["ehr"]}]})
    r = relay(cfg, plain_gunicorn=plain, workers=2)
    good = cfg.read_text()
    cfg.write_text(good + "\nrules: [{name: x, do: [no-such-action]}]\n")
    r.signal(signal.SIGHUP)
    wait_until(lambda: "config rejected" in r.logs() and "no-such-action" in r.logs(),
               timeout=BOOT, message="the rejection, with its problems, in the log")

    def rejected_everywhere() -> bool:
        ready = readyz(r)
        metrics = get(r.url + "/metrics")
        return (ready is not None and "config_rejected" in ready and metrics is not None
                and metric(metrics.text, "suki_relay_config_reload_rejected") == 1)

    wait_until(rejected_everywhere, timeout=BOOT, interval=0.3,
               message="the rejection in /readyz and metrics")
    assert post_signed(r.webhook, unique_body()).status_code == 200
    wait_until(lambda: first.received, message="delivery under the previous config")
    assert r.proc is not None and r.proc.poll() is None
    lines = [line for line in r.logs().splitlines()
             if "config rejected" in line and "no-such-action" in line]
    assert len(lines) == 1, lines  # logged once, not once per worker
    assert " error " in lines[0]

    full = yaml.safe_load(good)
    full["actions"]["ehr"]["url"] = second.url
    cfg.write_text(yaml.safe_dump(full))
    r.signal(signal.SIGHUP)

    def fixed() -> bool:
        ready = readyz(r)
        return ready is not None and "config_rejected" not in ready

    wait_until(fixed, timeout=BOOT, interval=0.3, message="the good config loaded")
    wait_until(lambda: r.logs().count("config reloaded") == 1, timeout=BOOT,
               message="the reload, logged once")

    def lands_on_second() -> bool:
        post_signed(r.webhook, unique_body())
        return bool(wait_until(lambda: len(first.received) + len(second.received) >= 2,
                               message="any delivery") and second.received)

    wait_until(lands_on_second, timeout=20, interval=0.5, message="the new config to take effect")
    assert r.stop() == 0
    assert r.logs().count("config reloaded") == 1


def _status_rule(status: str) -> dict[str, object]:
    return {"name": "failures", "when": {"status": status}, "do": ["ehr"]}


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("plain", [True, False], ids=["plain-gunicorn", "serve"])
def test_serve_refuses_what_check_calls_an_error(write_config, relay, sink, plain) -> None:  # type: ignore[no-untyped-def]
    """`status: sucess` fails check, so it stops serve as well (it used to start, and every
    failure then fell through to `unmatched`)."""
    from tests.support.relay import RelayProcess

    cfg = write_config({"actions": {"ehr": http_action(sink().url)},
                        "rules": [_status_rule("sucess")]})
    r = RelayProcess(cfg, plain_gunicorn=plain, workers=1).start(wait=False)
    try:
        assert r.proc is not None
        assert r.proc.wait(30) != 0
    finally:
        r.stop()
    assert "'sucess' is no status the relay knows; did you mean 'success'?" in r.logs()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("plain", [True, False], ids=["plain-gunicorn", "serve"])
def test_check_warnings_are_logged_and_its_errors_refuse_a_reload(write_config, relay, sink,  # type: ignore[no-untyped-def]
                                                                  plain) -> None:
    target = sink()
    cfg = write_config({"actions": {"ehr": http_action(target.url)},
                        "rules": [_status_rule("timed_out")]})
    r = relay(cfg, plain_gunicorn=plain, workers=2)
    warned = [line for line in r.logs().splitlines() if "config warning" in line]
    assert len(warned) == 1 and " warning " in warned[0] and "'timed_out'" in warned[0], warned

    full = yaml.safe_load(cfg.read_text())
    full["rules"] = [_status_rule("sucess")]
    cfg.write_text(yaml.safe_dump(full))
    r.signal(signal.SIGHUP)
    wait_until(lambda: "config rejected" in r.logs() and "did you mean 'success'" in r.logs(),
               timeout=BOOT, message="the reload refused for what check calls an error")
    wait_until(lambda: (readyz(r) or {}).get("config_rejected"), timeout=BOOT, interval=0.3,
               message="the rejection in /readyz")
    body = unique_body("timeout", status="timed_out")
    assert post_signed(r.webhook, body).status_code == 200
    wait_until(lambda: target.received, message="delivery under the last good config")

    # timed_out is known now (the store has seen one); another undocumented status is not
    full["rules"] = [_status_rule("failure"), _status_rule("abandoned") | {"name": "gone"}]
    cfg.write_text(yaml.safe_dump(full))
    r.signal(signal.SIGHUP)
    wait_until(lambda: r.logs().count("config warning") == 2, timeout=BOOT,
               message="the reloaded config's warning, logged once")
