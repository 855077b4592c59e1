"""What an on-call engineer does: inspect, replay, reroute, prune, scrape, reload, stop."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from suki_relay.testing import SECRET, Reply, post_signed, unique_body, wait_until

from .conftest import http_action, open_test_store, run_cli


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("-c", str(cfg), *args)


def cli_json(cfg: Path, *args: str) -> Any:
    result = cli(cfg, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_outage_then_replay_failed_delivers_each_once_more(write_config, relay, sink,
                                                           store_url) -> None:  # type: ignore[no-untyped-def]
    outage = {"on": True}
    target = sink(handler=lambda got: Reply(503 if outage["on"] else 200))
    cfg = write_config({
        "actions": {"ehr": http_action(target.url, retry={"initial_seconds": 0.1,
                                                          "max_attempts": 2})},
        "rules": [{"name": "all", "do": ["ehr"]}]})
    r = relay(cfg)
    events = [post_signed(r.webhook, unique_body()).json()["event_id"] for _ in range(4)]
    wait_until(lambda: len(cli_json(cfg, "deliveries", "--state", "failed")) == 4,
               message="4 failed deliveries")
    outage["on"] = False

    plan = cli_json(cfg, "replay", "--failed", "--dry-run")
    assert sorted(d["event_id"] for d in plan) == sorted(events)
    time.sleep(0.5)
    assert all(g.headers for g in target.received) and len(target.received) == 8  # dry run sent nothing

    assert cli(cfg, "replay", "--failed").returncode == 0
    wait_until(lambda: len(cli_json(cfg, "deliveries", "--state", "done")) == 4,
               message="replayed deliveries done")
    ok = [g.headers["Idempotency-Key"] for g in target.received[8:]]
    assert len(ok) == 4 and len(set(ok)) == 4  # each exactly once more

    shown = cli_json(cfg, "show", events[0])
    attempts = shown["delivery_list"][0]["attempt_list"]
    assert [a["outcome"] for a in attempts] == ["retry", "failed", "ok"]  # history kept
    assert "payload" not in shown
    text = cli(cfg, "show", events[0]).stdout
    assert "session_id" not in text.split("rules matched")[1]  # no payload without --payload
    assert '"session_id"' in cli(cfg, "show", events[0], "--payload").stdout


def test_events_listing_filters_and_reroute(write_config, relay, sink, store_url,
                                            tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    rules = [{"name": "failures", "when": {"status": "failure"}, "do": ["ehr"]}]
    cfg = write_config({"actions": {"ehr": http_action(target.url)}, "rules": rules})
    r = relay(cfg)
    failure = post_signed(r.webhook, unique_body("failure")).json()["event_id"]
    timeout = post_signed(r.webhook, unique_body("timeout")).json()["event_id"]
    post_signed(r.webhook, b'["not an object"]')

    listed = cli_json(cfg, "events")
    assert [e["status"] for e in listed] == ["MALFORMED", "timeout", "failure"]
    assert [e["id"] for e in cli_json(cfg, "events", "--status", "failure")] == [failure]
    assert [e["id"] for e in cli_json(cfg, "events", "--no-matched", "--no-malformed")] == \
        [timeout]
    assert len(cli_json(cfg, "events", "--malformed")) == 1
    assert cli_json(cfg, "events", "--since", "1h") and not cli_json(cfg, "events", "--until",
                                                                      "1h")
    table = cli(cfg, "events").stdout
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


# keeps a delivery to a refusing target pending (unfinished) however long the test takes
NEVER_GIVES_UP = {"initial_seconds": 0.2, "max_seconds": 1, "max_attempts": 1000}

def test_prune_deletes_only_old_finished_events(write_config, relay, sink, store_url) -> None:  # type: ignore[no-untyped-def]
    target = sink(default=Reply(503))
    cfg = write_config({"actions": {"ehr": http_action(target.url, retry=NEVER_GIVES_UP)},
                        "rules": [{"name": "failures", "when": {"status": "failure"},
                                   "do": ["ehr"]}]})
    r = relay(cfg)
    pending = post_signed(r.webhook, unique_body("failure")).json()["event_id"]
    finished = post_signed(r.webhook, unique_body("timeout")).json()["event_id"]
    time.sleep(1.2)
    assert cli_json(cfg, "prune", "--older-than", "1h")["deleted_events"] == 0
    assert cli_json(cfg, "prune", "--older-than", "1s")["deleted_events"] == 1
    ids = [e["id"] for e in cli_json(cfg, "events")]
    assert pending in ids and finished not in ids


def test_retention_prunes_by_itself(write_config, relay, sink, store_url) -> None:  # type: ignore[no-untyped-def]
    target = sink(default=Reply(503))
    cfg = write_config({"actions": {"ehr": http_action(target.url, retry=NEVER_GIVES_UP)},
                        "rules": [{"name": "failures", "when": {"status": "failure"},
                                   "do": ["ehr"]}],
                        "retention": {"days": 1 / 86400}})  # one second
    first = relay(cfg)
    pending = post_signed(first.webhook, unique_body("failure")).json()["event_id"]
    finished = post_signed(first.webhook, unique_body("timeout")).json()["event_id"]
    time.sleep(1.5)
    first.stop()
    second = relay(cfg)  # prunes when it starts, then hourly
    wait_until(lambda: "retention pruned finished events" in second.logs(), message="prune")
    ids = [e["id"] for e in cli_json(cfg, "events")]
    assert pending in ids and finished not in ids


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


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
    import suki_relay.signing as signing

    headers = signing.signed_headers(SECRET, body)
    for _ in range(2):
        requests.post(r.webhook, data=body, headers=headers, timeout=5)
    wait_until(lambda: len(target.received) == 8, message="8 deliveries")

    def scraped() -> str:
        return requests.get(r.url + "/metrics", timeout=5).text

    wait_until(lambda: metric(scraped(), "suki_relay_delivery_attempts_total", outcome="ok") == 8,
               message="delivery metrics")
    text = scraped()
    assert metric(text, "suki_relay_requests_total", outcome="accepted") == 8
    assert metric(text, "suki_relay_requests_total", outcome="duplicate") == 1
    assert metric(text, "suki_relay_requests_total", outcome="bad_signature") == 1
    assert metric(text, "suki_relay_events_total", status="failure") == 8
    assert metric(text, "suki_relay_ack_seconds_count") == 10
    assert metric(text, "suki_relay_deliveries", state="done") == 8
    assert metric(text, "suki_relay_deliveries", state="pending") == 0
    assert "20965414" not in text and "29de56bc" not in text  # no payload values


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


def test_sigterm_mid_delivery_loses_nothing(write_config, relay, sink, store_url) -> None:  # type: ignore[no-untyped-def]
    quick = sink(default=Reply(200, delay=1))  # finishes within shutdown_seconds (5)
    stuck = sink(handler=lambda got: Reply(200, delay=30 if len(stuck.received) == 1 else 0))
    cfg = write_config({"actions": {"quick": http_action(quick.url),
                                    "stuck": http_action(stuck.url, timeout_seconds=40)},
                        "rules": [{"name": "all", "do": ["quick", "stuck"]}]})
    r = relay(cfg)
    event_id = post_signed(r.webhook, unique_body()).json()["event_id"]
    wait_until(lambda: quick.received and stuck.received, message="both deliveries in flight")
    assert r.stop(timeout=30) == 0
    store = open_test_store(store_url, cfg.parent)
    states = {d.action: d.state for d in store.deliveries(event_id=event_id)}
    assert states == {"quick": "done", "stuck": "pending"}  # finished, or handed back
    assert "released unfinished deliveries" in r.logs()
    relay(cfg)  # the next start picks it up at once, without waiting for a lease
    wait_until(lambda: len(stuck.received) == 2, message="the handed-back delivery")
    wait_until(lambda: {d.state for d in store.deliveries(event_id=event_id)} == {"done"},
               message="done")


PHI = ["PHI-NOTE-TEXT", "PHI-TRANSCRIPT", "Error in transcription", "bp-120-80"]


def test_logs_carry_no_phi_and_no_secrets(write_config, relay, sink, store_url,
                                          tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    def suki_api(got):  # type: ignore[no-untyped-def]
        if got.path.endswith("/login"):
            return Reply(200, b'{"suki_token": "TOKEN-abc123"}')
        if got.path.endswith("/transcript"):
            return Reply(200, json.dumps({"final_transcript": [
                {"transcript": "PHI-TRANSCRIPT"}]}).encode())
        return Reply(200, json.dumps({"summary": [{"title": "A", "content": "PHI-NOTE-TEXT"}],
                                      "structured_data": [{"data": "bp-120-80"}]}).encode())

    suki = sink(handler=suki_api)
    failing = sink(default=Reply(500, b"PHI-NOTE-TEXT echoed back by a broken target"))
    cfg = write_config({
        "suki": {"base_url": suki.url, "partner_id": "p", "partner_token": "PARTNER-SECRET"},
        "actions": {"save": {"type": "fetch_note", "directory": "notes",
                             "links": ["contents", "transcripts", "structured_data"],
                             "format": "text"},
                    "broken": http_action(failing.url, headers={"Authorization": "Bearer HDR-SECRET"},
                                          retry={"initial_seconds": 0.1, "max_attempts": 2}),
                    "bad-template": http_action(failing.url, body="{{ event.nope }}")},
        "rules": [{"name": "notes", "when": {"status": "success"}, "do": ["save"]},
                  {"name": "failures", "when": {"status": "failure"},
                   "do": ["broken", "bad-template"]}]})
    r = relay(cfg)
    post_signed(r.webhook, unique_body("success"))
    post_signed(r.webhook, unique_body("failure"))
    post_signed(r.webhook, unique_body("failure"), secret="wrong")
    post_signed(r.webhook, b'{"status": 5, "note": "PHI-NOTE-TEXT"}')
    store = open_test_store(store_url, cfg.parent)
    wait_until(lambda: {d.state for d in store.deliveries()} <= {"done", "failed"}
               and len(store.deliveries()) == 3, timeout=30, message="all deliveries finished")
    r.stop()
    logs = r.logs()
    assert "delivery attempt" in logs and "request" in logs
    for needle in [*PHI, SECRET, "PARTNER-SECRET", "TOKEN-abc123", "HDR-SECRET"]:
        assert needle not in logs, needle
    saved = list((cfg.parent / "notes").rglob("*"))
    assert any(p.suffix == ".txt" for p in saved)
    assert re.search(r"outcome=failed .*error_class=template", logs)
