"""Recovery against a local Suki stand-in: `suki-relay recover`, gap detection, two nodes."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from suki_relay.config.load import load_config
from suki_relay.deliver.deliverer import Deliverer
from suki_relay.recover.recovery import GapWatcher, Recoverer, listed_sessions
from suki_relay.store import EventFilter, NewEvent, Store
from suki_relay.store.sessions import Listed
from suki_relay.testing import (
    SECRET,
    Sink,
    SukiStandIn,
    free_port,
    wait_until,
)

from .conftest import FAST_DELIVERY, cli_here, http_action, open_test_store, run_cli

ENCOUNTER = "enc-0001"


@pytest.fixture
def suki() -> Any:
    with SukiStandIn(default_status=None) as fake:
        yield fake


def write_config(folder: Path, suki: SukiStandIn | dict[str, Any], store: str = "sqlite:///relay.db",
                 sink: Sink | None = None, **extra: Any) -> Path:
    """A config whose success events save their note (fetch_note) and are forwarded to
    ``sink`` with what templates saw; every other event is forwarded too."""
    actions: dict[str, Any] = {"save-note": {
        "type": "fetch_note", "directory": "notes", "format": "text",
        "retry": {"initial_seconds": 0.2, "max_seconds": 1, "max_attempts": 3}}}
    if sink is not None:
        actions["record"] = http_action(sink.url, body=(
            '{"recovered": {{ recovered | json }}, "status": {{ event.status | json }}, '
            '"session": {{ event.session_id | json }}}'))
    config: dict[str, Any] = {
        "receiver": {"secrets": [SECRET]}, "store": store, "delivery": dict(FAST_DELIVERY),
        "suki": suki.settings() if isinstance(suki, SukiStandIn) else suki,
        "actions": actions,
        "rules": [{"name": "notes", "when": {"status": "success"},
                   "do": ["save-note", *(["record"] if sink else [])]}],
        "unmatched": ["record"] if sink else [],
        **extra,
    }
    path = folder / "actions.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def received_event(store: Store, session: str, status: str = "failure") -> str:
    body = json.dumps({"status": status, "session_id": session,
                       "encounter_id": ENCOUNTER}).encode()
    event = NewEvent(f"k-{session}", body, 1, status, session, ENCOUNTER, False, [], [])
    return store.record([event])[0].event_id


def events_of(store: Store, **filters: Any) -> list[dict[str, Any]]:
    return [asdict(e) for e in store.events(EventFilter(limit=1000, **filters))]


def body_of(store: Store, event_id: str) -> Any:
    detail = store.event(event_id)
    assert detail is not None
    return json.loads(detail.body)


# ---------------------------------------------------------------- suki-relay recover


def test_recover_completed_session_saves_its_note(tmp_path: Path, suki: SukiStandIn,
                                                  sink: Any) -> None:
    target = sink()
    suki.statuses["sess-done"] = "completed"
    config_file = write_config(tmp_path, suki, sink=target)

    result = run_cli("recover", "sess-done", "--encounter", ENCOUNTER, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.strip().splitlines()
    assert header.split() == ["SESSION", "OUTCOME", "DETAIL"]
    assert len(lines) == 1 and lines[0].split()[:4] == ["sess-done", "recovered", "Suki", "says"]
    assert "recorded a success event" in lines[0]
    assert result.stderr == ""  # the row says it: no log line repeats it on stderr
    assert "PHI" not in result.stdout + result.stderr

    store = open_test_store(f"sqlite:///{tmp_path / 'relay.db'}")
    [event] = events_of(store, recovered=True)
    assert (event["session_id"], event["status"], event["encounter_id"]) == (
        "sess-done", "success", ENCOUNTER)
    payload = body_of(store, event["id"])
    assert payload["_links"]["contents"][0]["href"] == \
        "/api/v1/ambient/session/sess-done/content"
    assert set(payload["_links"]) == {"contents", "encounter_content", "structured_data",
                                      "encounter_structured_data", "status", "transcripts"}
    assert payload["session_status"] == "completed"

    deliverer = Deliverer(load_config(config_file), store)
    deliverer.start()
    try:
        note = tmp_path / "notes" / ENCOUNTER / "sess-done" / "contents.txt"
        wait_until(note.exists, message="the recovered note saved")
        assert "PHI-NOTE-TEXT" in note.read_text()
        wait_until(lambda: target.received, message="the forward of the recovered event")
        assert target.received[0].json() == {"recovered": True, "status": "success",
                                             "session": "sess-done"}
    finally:
        deliverer.stop(timeout=5)

    shown = cli_here("show", event["id"], cwd=tmp_path)
    assert "recovered from Suki's status API" in shown.stdout
    assert "(recovered)" in shown.stdout and "config unknown" not in shown.stdout
    listed = cli_here("events", "--recovered", "--json", cwd=tmp_path)
    assert [e["session_id"] for e in json.loads(listed.stdout)] == ["sess-done"]


def test_recover_leaves_unfinished_known_and_dry_run_alone(tmp_path: Path,
                                                          suki: SukiStandIn) -> None:
    suki.statuses.update({"sess-running": "running", "sess-done": "completed",
                          "sess-had": "completed"})
    write_config(tmp_path, suki)
    store = open_test_store(f"sqlite:///{tmp_path / 'relay.db'}")
    had = received_event(store, "sess-had", "success")

    dry = cli_here("recover", "sess-running", "sess-had", "sess-done", "sess-nobody",
                  "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    header, *lines = dry.stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["sess-running", "unfinished"], ["sess-had", "present"],
        ["sess-done", "would_recover"], ["sess-nobody", "unknown"]]
    # aligned: every column starts where its heading does
    for column in ("OUTCOME", "DETAIL"):
        start = header.index(column)
        assert all(line[start - 2:start] == "  " and line[start] != " " for line in lines)
    assert "Suki says running" in lines[0] and had in lines[1]
    assert "nothing recorded" in lines[2]
    assert [e["id"] for e in events_of(store)] == [had]  # --dry-run recorded nothing
    assert "sess-had" not in suki.asked  # a session with an event: Suki is not even asked

    ids = tmp_path / "ids.txt"
    ids.write_text("# from the clinic\nsess-running, sess-had\n")
    again = cli_here("recover", "--from-file", str(ids), "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert [(r["session_id"], r["outcome"]) for r in json.loads(again.stdout)] == [
        ("sess-running", "unfinished"), ("sess-had", "present")]
    assert [e["id"] for e in events_of(store)] == [had]


def test_recover_exits_1_when_suki_cannot_be_asked(tmp_path: Path) -> None:
    write_config(tmp_path, {"base_url": f"http://127.0.0.1:{free_port()}",
                            "partner_id": "p-1", "partner_token": "pt-SECRET",
                            "timeout_seconds": 2})
    result = cli_here("recover", "sess-1", "../../auth/login", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()[1:]
    assert lines[0].split()[:2] == ["sess-1", "error"] and "Suki could not be asked" in lines[0]
    assert lines[1].split()[1] == "invalid"  # never sent anywhere
    assert "pt-SECRET" not in result.stdout + result.stderr


def test_failed_aborted_skipped_are_recorded_as_documented(tmp_path: Path,
                                                           suki: SukiStandIn) -> None:
    suki.statuses.update({"s-failed": "failed", "s-aborted": "aborted",
                          "s-skipped": "skipped", "s-paused": "paused"})
    config = load_config(write_config(tmp_path, suki))
    store = open_test_store(config.store_url, config.base_dir)
    # the encounter comes from another event's sessions list
    body = json.dumps({"status": "success", "session_id": "s-other", "encounter_id": "enc-9",
                       "sessions": ["s-other", "s-failed"]}).encode()
    store.record([NewEvent("k1", body, 1, "success", "s-other", "enc-9", False, [], [])])
    recoverer = Recoverer(config, store)
    results = {sid: recoverer.recover(sid) for sid in suki.statuses}
    assert {sid: r.outcome for sid, r in results.items()} == {
        "s-failed": "recovered", "s-aborted": "recovered", "s-skipped": "recovered",
        "s-paused": "unfinished"}
    assert "recorded an aborted event" in results["s-aborted"].detail
    assert "recorded a failure event" in results["s-failed"].detail
    got = {e["session_id"]: body_of(store, e["id"])
           for e in events_of(store, recovered=True)}
    assert got == {
        "s-failed": {"status": "failure", "session_id": "s-failed", "encounter_id": "enc-9",
                     "session_status": "failed"},
        "s-aborted": {"status": "aborted", "session_id": "s-aborted", "session_status": "aborted"},
        "s-skipped": {"status": "skipped", "session_id": "s-skipped", "session_status": "skipped"},
    }


def test_listed_sessions_ignores_its_own_and_odd_ids() -> None:
    body = json.dumps({"status": "success", "session_id": "a", "encounter_id": "e",
                       "sessions": ["a", "b", "b", "../x", 7, "c"]}).encode()
    assert [s.session_id for s in listed_sessions("evt", body, 1.0)] == ["b", "c"]
    assert listed_sessions("evt", b"not json", 1.0) == []


# ---------------------------------------------------------------- gap detection


def test_gap_watcher_leaves_arrived_sessions_and_gives_up(tmp_path: Path,
                                                          suki: SukiStandIn) -> None:
    suki.statuses.update({"w-arrived": "completed", "w-stuck": "running"})
    config = load_config(write_config(tmp_path, suki, recovery={
        "grace_seconds": 1, "check_every_seconds": 1, "give_up_after_hours": 0.001}))
    store = open_test_store(config.store_url, config.base_dir)
    now = time.time()
    store.note_listed([Listed("w-arrived", ENCOUNTER, "evt_x", now - 2),
                       Listed("w-stuck", ENCOUNTER, "evt_x", now - 2)], 1)
    received_event(store, "w-arrived", "success")  # its own notification came after all
    watcher = GapWatcher(config, store, Recoverer(config, store))
    outcomes = {r.session_id: r.outcome for r in watcher.run_once()}
    assert outcomes == {"w-arrived": "present", "w-stuck": "unfinished"}
    assert "w-arrived" not in suki.asked
    states = {r.session_id: r.state for r in store.recovery_sessions()}
    assert states == {"w-arrived": "present", "w-stuck": "waiting"}

    time.sleep(max(0.0, now + 3.7 - time.time()))  # past give_up_after_hours (3.6 s)
    wait_until(lambda: watcher.run_once(), 10, message="the stuck session checked again")
    states = {r.session_id: r.state for r in store.recovery_sessions()}
    assert states["w-stuck"] == "given_up"
    assert events_of(store, session_id="w-stuck") == []
    assert watcher.run_once() == []  # given up: never asked again


def test_no_check_while_this_nodes_spool_holds_events(tmp_path: Path,
                                                     suki: SukiStandIn) -> None:
    """A session's own notification may wait in the spool (a database outage): recovering
    it before the spool is moved would record the session twice."""
    from suki_relay.store.spool import Spool

    suki.statuses["sp-1"] = "completed"
    config = load_config(write_config(tmp_path, suki, recovery={
        "grace_seconds": 1, "check_every_seconds": 1, "give_up_after_hours": 1}))
    store = open_test_store(config.store_url, config.base_dir)
    store.note_listed([Listed("sp-1", ENCOUNTER, "evt_x", time.time() - 5)], 1)
    spool = Spool(tmp_path / "spool.db", 100)
    try:
        body = json.dumps({"status": "success", "session_id": "sp-1"}).encode()
        spooled = NewEvent("k-sp", body, 1, "success", "sp-1", ENCOUNTER, False, [], [])
        spool.add([spooled])
        watcher = GapWatcher(config, store, Recoverer(config, store), spool=spool)
        assert watcher.run_once() == [] and suki.asked == {}
        spool.remove([spooled.id])  # moved into the store (here: by hand)
        store.record([spooled])
        assert [r.outcome for r in watcher.run_once()] == ["present"]
        assert suki.asked == {}
    finally:
        spool.close()


def test_recovery_needs_suki_section(tmp_path: Path) -> None:
    (tmp_path / "actions.yaml").write_text(
        "receiver: {secrets: [x]}\nrecovery: {grace_seconds: 5}\n")
    result = cli_here("check", cwd=tmp_path)
    assert result.returncode == 1
    assert "recovery: needs the top-level `suki:` section" in result.stderr
    (tmp_path / "actions.yaml").write_text(
        "receiver: {secrets: [x]}\nrecovery: {enabled: false, grace_seconds: 5}\n")
    assert cli_here("check", cwd=tmp_path).returncode == 0


# ---------------------------------------------------------------- two nodes, one database


def test_two_nodes_on_postgresql_recover_a_session_once(tmp_path: Path, pg_url: str) -> None:
    sessions = [f"pg-{i}" for i in range(6)]
    with SukiStandIn(statuses=dict.fromkeys(sessions, "completed"), default_status=None,
                     status_delay=0.5) as suki:
        config = load_config(write_config(tmp_path, suki, store=pg_url, recovery={
            "grace_seconds": 1, "check_every_seconds": 1, "give_up_after_hours": 1}))
        stores = [open_test_store(pg_url), open_test_store(pg_url)]
        stores[0].note_listed([Listed(s, ENCOUNTER, "evt_x", time.time() - 5)
                               for s in sessions], 1)
        watchers = [GapWatcher(config, s, Recoverer(config, s), owner=f"node-{i}")
                    for i, s in enumerate(stores)]
        results: list[list[Any]] = [[], []]
        threads = [threading.Thread(target=lambda i=i: results[i].extend(
            watchers[i].check_due())) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert suki.asked == dict.fromkeys(sessions, 1)  # each session checked by one node
        assert sorted(r.session_id for r in results[0] + results[1]) == sessions
        assert results[0] and results[1]  # and both nodes did work
        recovered = events_of(stores[0], recovered=True)
        assert sorted(e["session_id"] for e in recovered) == sessions

        # two `recover` runs racing on one session: one event
        suki.statuses["pg-race"] = "completed"
        race: list[str] = []
        runs = [threading.Thread(target=lambda s=s: race.append(
            Recoverer(config, s).recover("pg-race", ENCOUNTER).outcome)) for s in stores]
        for t in runs:
            t.start()
        for t in runs:
            t.join(60)
        assert sorted(race) == ["present", "recovered"]
        assert len(events_of(stores[1], session_id="pg-race")) == 1


def test_a_version_1_store_is_upgraded_in_place(tmp_path: Path, store_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from suki_relay.store import open_store, schema

    everything = schema.MIGRATIONS
    monkeypatch.setattr(schema, "MIGRATIONS", everything[:1])  # a relay from before recovery
    old = open_store(store_url, tmp_path)
    with old.tx() as tx:  # written as a version-1 relay wrote it
        tx.exec("INSERT INTO events (id, received_at, dedup_key, status, session_id, body) "
                "VALUES ('evt_old', 1, 'k', 'success', 's-old', ?)", (b"{}",))
        tx.exec("INSERT INTO deliveries (id, event_id, action, state, cycle_started_at, "
                "next_attempt_at, updated_at) VALUES ('dlv_old', 'evt_old', 'a', 'done', 1, 1, 1)")
    old.close()
    monkeypatch.setattr(schema, "MIGRATIONS", everything)

    store = open_test_store(store_url, tmp_path)
    [old_event] = events_of(store)
    assert (old_event["session_id"], old_event["recovered"]) == ("s-old", False)
    assert store.event_for_session("s-old") == old_event["id"]
    assert store.rejections() == [] and store.recovery_counts() == {}
    [delivery] = store.deliveries()
    assert delivery.cause is None


def test_every_finished_session_status_is_recorded_as_one_event_status() -> None:
    from suki_relay.protocol import FINISHED_SESSION_STATUSES, SESSION_STATUSES
    from suki_relay.recover.recovery import RECORDED_AS

    assert set(RECORDED_AS) == set(FINISHED_SESSION_STATUSES)
    assert len(set(SESSION_STATUSES)) == len(SESSION_STATUSES) == 8
