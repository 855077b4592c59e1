"""The operator's commands over the store (events, show, deliveries, replay, reroute,
prune), run in process against a relay delivering in process."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from suki_relay.cli.main import main
from suki_relay.testing import Reply, unique_body, wait_until

from .conftest import http_action, old_events

# keeps a delivery to a refusing target pending (unfinished) however long the test takes
NEVER_GIVES_UP = {"initial_seconds": 0.2, "max_seconds": 1, "max_attempts": 1000}


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run `suki-relay -c CONFIG ARGS` in process: (exit status, stdout, stderr)."""

    def run(cfg: Path, *args: str) -> tuple[int, str, str]:
        status = main(["-c", str(cfg), *args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture
def cli_json(cli):  # type: ignore[no-untyped-def]
    def run(cfg: Path, *args: str) -> Any:
        status, out, err = cli(cfg, *args, "--json")
        assert status == 0, err
        return json.loads(out)

    return run


def test_outage_then_replay_failed_delivers_each_once_more(write_config, local_relay, sink,
                                                           cli, cli_json) -> None:  # type: ignore[no-untyped-def]
    outage = {"on": True}
    target = sink(handler=lambda got: Reply(503 if outage["on"] else 200))
    cfg = write_config({
        "actions": {"ehr": http_action(target.url, retry={"initial_seconds": 0.1,
                                                          "max_attempts": 2})},
        "rules": [{"name": "all", "do": ["ehr"]}]})
    r = local_relay(cfg)
    events = [r.accept(unique_body()) for _ in range(4)]
    wait_until(lambda: len(cli_json(cfg, "deliveries", "--state", "failed")) == 4,
               message="4 failed deliveries")
    outage["on"] = False

    plan = cli_json(cfg, "replay", "--failed", "--dry-run")
    assert sorted(d["event_id"] for d in plan) == sorted(events)
    time.sleep(0.5)  # a dry run sends nothing: each delivery was tried twice, and no more
    tried = Counter(g.headers["Idempotency-Key"] for g in target.received)
    assert sorted(tried) == sorted(d["id"] for d in plan) and set(tried.values()) == {2}

    assert cli(cfg, "replay", "--failed")[0] == 0
    wait_until(lambda: len(cli_json(cfg, "deliveries", "--state", "done")) == 4,
               message="replayed deliveries done")
    ok = [g.headers["Idempotency-Key"] for g in target.received[8:]]
    assert len(ok) == 4 and set(ok) == set(tried)  # each exactly once more

    shown = cli_json(cfg, "show", events[0])
    attempts = shown["delivery_list"][0]["attempt_list"]
    assert [a["outcome"] for a in attempts] == ["retry", "failed", "ok"]  # history kept
    assert "payload" not in shown
    text = cli(cfg, "show", events[0])[1]
    assert "session_id" not in text.split("rules matched")[1]  # no payload without --payload
    assert '"session_id"' in cli(cfg, "show", events[0], "--payload")[1]


def test_events_listing_filters_and_reroute(write_config, local_relay, sink, cli,
                                            cli_json) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    rules = [{"name": "failures", "when": {"status": "failure"}, "do": ["ehr"]}]
    cfg = write_config({"actions": {"ehr": http_action(target.url)}, "rules": rules})
    r = local_relay(cfg)
    failure = r.accept(unique_body("failure"))
    timeout = r.accept(unique_body("timeout"))
    r.post_signed(b'["not an object"]')

    listed = cli_json(cfg, "events")
    assert [e["status"] for e in listed] == ["MALFORMED", "timeout", "failure"]
    assert [e["id"] for e in cli_json(cfg, "events", "--status", "failure")] == [failure]
    assert [e["id"] for e in cli_json(cfg, "events", "--no-matched", "--no-malformed")] == \
        [timeout]
    assert len(cli_json(cfg, "events", "--malformed")) == 1
    assert cli_json(cfg, "events", "--since", "1h") and not cli_json(cfg, "events", "--until",
                                                                      "1h")
    table = cli(cfg, "events")[1]
    assert table.splitlines()[0].split()[:3] == ["ID", "RECEIVED", "STATUS"]

    # fix the rules, then reroute the timeout that nothing matched
    full = yaml.safe_load(cfg.read_text())
    full["rules"].append({"name": "timeouts", "when": {"status": "timeout"}, "do": ["ehr"]})
    cfg.write_text(yaml.safe_dump(full))
    assert cli_json(cfg, "reroute", timeout, "--dry-run")["new_actions"] == ["ehr"]
    assert cli_json(cfg, "reroute", timeout)["new_actions"] == ["ehr"]
    wait_until(lambda: any(g.headers["X-Suki-Relay-Event"] == timeout for g in target.received),
               message="the rerouted delivery")
    assert cli_json(cfg, "reroute", timeout)["new_actions"] == []  # idempotent


def test_prune_deletes_only_old_finished_events(write_config, local_relay, sink,
                                                cli_json) -> None:  # type: ignore[no-untyped-def]
    target = sink(default=Reply(503))
    cfg = write_config({"actions": {"ehr": http_action(target.url, retry=NEVER_GIVES_UP)},
                        "rules": [{"name": "failures", "when": {"status": "failure"},
                                   "do": ["ehr"]}]})
    r = local_relay(cfg)
    pending, finished = old_events(r.store)
    recent = r.accept(unique_body("timeout"))
    time.sleep(1.2)
    assert cli_json(cfg, "prune", "--older-than", "3h")["deleted_events"] == 0
    assert cli_json(cfg, "prune", "--older-than", "1s")["deleted_events"] == 1
    ids = [e["id"] for e in cli_json(cfg, "events")]
    assert pending in ids and finished not in ids
    assert recent in ids  # inside the replay window: kept, whatever age was asked for


def test_unknown_events_and_bad_times_are_errors_not_tracebacks(write_config, cli) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config()
    assert cli(cfg, "show", "evt_nope") == (1, "", "error: no event evt_nope\n")
    status, _, err = cli(cfg, "events", "--since", "yesterday-ish")
    assert status == 1 and "cannot read time" in err
    assert cli(cfg, "replay")[0] == 1
