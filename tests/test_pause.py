"""A sick target pauses its action: after pause_after failed attempts in a row its
deliveries wait (neither failing nor using up attempts), one probe goes out every
probe_every_seconds, and the first success resumes it. Nothing is lost."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from suki_relay.testing import Reply, unique_body, wait_until

from .conftest import cli_here, http_action

EVENTS = 12
PROBE_EVERY = 0.25


def _config(target: str, alerts: str, pause_after: int = 10,
            retry_seconds: float = 30) -> dict[str, Any]:
    return {
        "actions": {
            # 2 tries each, the second long after the first: no retry comes before the
            # pause, and the probes go to the two deliveries never tried, again and again,
            # which would fail for good if a probe used up a try
            "ehr": http_action(target, max_concurrency=1, pause_after=pause_after,
                               probe_every_seconds=PROBE_EVERY,
                               retry={"initial_seconds": retry_seconds,
                                      "max_seconds": retry_seconds, "max_attempts": 2}),
            "alert": http_action(alerts, body='{"action": "{{ failed.action }}", '
                                               '"error": {{ failed.error | tojson }}}'),
        },
        "rules": [{"name": "all", "do": ["ehr"]}],
        "on_failure": ["alert"],
    }


def _sessions(received: list[Any]) -> list[str]:
    return [json.loads(r.body)["session_id"] for r in received]


def test_a_failing_target_pauses_probes_resumes_and_nothing_is_lost(
        write_config: Any, local_relay: Any, sink: Any, relay_log: Any, tmp_path: Path) -> None:
    target, alerts = sink(default=Reply(503, b"down")), sink()
    relay = local_relay(write_config(_config(target.url, alerts.url)))
    sent = [unique_body() for _ in range(EVENTS)]
    for body in sent:
        relay.accept(body)

    wait_until(lambda: "action paused" in relay_log.text(), message="the pause")
    assert len(target.received) == 10  # the 11th and 12th were not attempted
    wait_until(lambda: len(alerts.received) == 1, message="on_failure told of the pause")
    assert "paused after 10 failed attempts in a row" in json.loads(alerts.received[0].body)[
        "error"]

    # paused: probes keep coming, one at a time and none sooner than 0.25 s after the one
    # before (a loaded machine only spaces them more: counted over the wait, not a sleep),
    # and no delivery fails or uses a try
    before, started = len(target.received), time.monotonic()
    wait_until(lambda: len(target.received) >= before + 6, timeout=30,
               message="six probes while paused")
    probes, waited = len(target.received) - before, time.monotonic() - started
    assert probes <= waited / PROBE_EVERY + 2, (probes, waited)  # not a flood
    assert target.max_active == 1
    state = {d.state for d in relay.store.deliveries(action="ehr")}
    assert state <= {"pending", "in_flight"}, state
    metrics = relay.client.get("/metrics").get_data(as_text=True)
    assert 'suki_relay_action_paused{action="ehr"} 1.0' in metrics
    listed = cli_here("actions", "--json", "-c", str(relay.config.file), cwd=tmp_path)
    [ehr] = [a for a in json.loads(listed.stdout) if a["action"] == "ehr"]
    assert ehr["paused"] and ehr["queued"] == EVENTS and "503" in ehr["last_error"]

    target.default = Reply(200)  # the target is back: the next probe resumes the action
    wait_until(lambda: len({d.id for d in relay.store.deliveries(action="ehr", state="done")})
               == EVENTS, timeout=30, message="every delivery done")
    assert sorted(set(_sessions(target.received))) == sorted(_sessions_of(sent))
    assert relay_log.text().count("action paused") == 1
    assert relay_log.text().count("action resumed") == 1
    wait_until(lambda: len(alerts.received) == 2, message="on_failure told of the resume")
    assert "resumed" in json.loads(alerts.received[1].body)["error"]
    assert [d.state for d in relay.store.deliveries(action="ehr", state="failed")] == []


def _sessions_of(bodies: list[bytes]) -> list[str]:
    return [json.loads(b)["session_id"] for b in bodies]


def test_pause_after_0_never_pauses(write_config: Any, local_relay: Any, sink: Any,
                                    relay_log: Any) -> None:
    target, alerts = sink(default=Reply(503)), sink()
    relay = local_relay(write_config(_config(target.url, alerts.url, pause_after=0,
                                             retry_seconds=0.1)))
    for _ in range(5):
        relay.accept(unique_body())
    # 5 deliveries x 2 tries: all fail for good, none waits on a pause
    wait_until(lambda: len(relay.store.deliveries(action="ehr", state="failed")) == 5,
               timeout=30, message="every delivery failed for good")
    assert len(target.received) == 10
    assert "action paused" not in relay_log.text()


def test_pause_and_resume_by_hand(write_config: Any, local_relay: Any, sink: Any,
                                  tmp_path: Path) -> None:
    target, alerts = sink(), sink()
    cfg = write_config(_config(target.url, alerts.url))
    paused = cli_here("pause", "ehr", "-c", str(cfg), cwd=tmp_path)
    assert paused.returncode == 0 and paused.stdout == (
        "ehr: paused; its deliveries wait until `suki-relay resume ehr`\n")
    again = cli_here("pause", "ehr", "-c", str(cfg), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == "ehr: was paused by hand already\n"
    assert cli_here("pause", "nope", "-c", str(cfg), cwd=tmp_path).returncode == 1
    relay = local_relay(cfg)
    for _ in range(3):
        relay.accept(unique_body())
    time.sleep(1.5)  # a pause by hand sends no probe
    assert target.received == []
    listed = cli_here("actions", "-c", str(cfg), cwd=tmp_path).stdout
    assert "paused by hand" in listed
    resumed = cli_here("resume", "ehr", "-c", str(cfg), cwd=tmp_path)
    assert resumed.returncode == 0 and "resumed" in resumed.stdout
    wait_until(lambda: len(target.received) == 3, message="the waiting deliveries, delivered")
    assert alerts.received == []  # a change by hand plans no on_failure actions
    assert "was not paused" in cli_here("resume", "ehr", "-c", str(cfg), cwd=tmp_path).stdout
