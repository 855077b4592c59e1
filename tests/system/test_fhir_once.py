"""Filed once through the whole relay: a worker killed mid-create, a delivery whose outcome
is unknown (listed, counted, alerted, settled by an operator), and SMART Backend Services
against the JWK Set the relay itself serves."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from suki_relay.deliver import smart
from suki_relay.testing import SukiStandIn, post_signed, unique_body, wait_until

from ..conftest import cli_here, open_test_store
from ..fhir_standin import FhirStandIn

PATIENT = "pat-42"
ENCOUNTER = "29de56bc-960a-4cd5-b18f-79a798d62874"  # the success sample's


def fhir_config(ehr: FhirStandIn, suki: SukiStandIn, profile: str, auth: dict[str, Any],
                **extra: Any) -> dict[str, Any]:
    action = {"type": "fhir", "base_url": ehr.base_url, "profile": profile,
              "subject": "Patient/{{ event.additional_info.patient_id }}",
              "encounter": "Encounter/{{ event.encounter_id }}", "auth": auth,
              "timeout_seconds": 20,
              "retry": {"initial_seconds": 0.1, "max_seconds": 0.3, "max_attempts": 6}, **extra}
    return {"suki": suki.settings(), "actions": {"file-note": action},
            "rules": [{"name": "notes", "when": {"status": "success"}, "do": ["file-note"]}]}


def body() -> bytes:
    return unique_body("success", additional_info={"patient_id": PATIENT})


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_worker_killed_mid_create_leaves_one_note_in_an_epic_chart(
        write_config, relay, store_url, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Epic stores the note and the relay is killed before the answer comes. The relay
    started again takes the delivery over (its lease ran out), searches before creating,
    finds the note: one document. The token came from a client assertion the stand-in
    verified against the JWK Set the relay serves."""
    key = smart.write_new_key(tmp_path / "ehr-key.pem", "RS384")
    with SukiStandIn() as suki, FhirStandIn("epic") as ehr:
        ehr.add_encounter(ENCOUNTER, PATIENT)
        cfg = write_config(fhir_config(ehr, suki, "epic", ehr.smart(key.path)))
        first = relay(cfg)
        ehr.jwks_url = first.url + "/.well-known/jwks.json"
        ehr.late_after_store = 60.0  # stored; the answer never comes in time
        event_id = post_signed(first.webhook, body()).json()["event_id"]
        wait_until(lambda: len(ehr.documents) == 1, timeout=30,
                   message="the note stored, answer pending")
        assert ehr.assertions and ehr.assertions[0]["header"]["kid"] == key.kid
        first.kill9()
        assert first.proc.returncode == -signal.SIGKILL
        # the EHR learns the JWK Set URL before the relay starts: once up, it may take the
        # delivery over (the lease has run out) and ask for a token at once
        second = relay(cfg, run=False)
        ehr.jwks_url = second.url + "/.well-known/jwks.json"
        second.start()
        store = open_test_store(store_url, cfg.parent)
        wait_until(lambda: [d.state for d in store.deliveries(event_id=event_id)] == ["done"],
                   timeout=30, message="the delivery settled after the restart")
        ehr.sink.release()
        (d,) = store.event(event_id).deliveries  # type: ignore[union-attr]
        assert [(a.outcome, a.note) for a in d.attempts] == [
            ("lost", None), ("ok", f"already filed DocumentReference/{next(iter(ehr.documents))}")]
        assert len(ehr.documents) == 1 and len(ehr.posts) == 1 and ehr.invalid == []
        shown = cli_here("show", event_id, "-c", str(cfg), cwd=cfg.parent)
        assert "already filed DocumentReference/eDoc0001" in shown.stdout


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_create_handed_back_at_shutdown_is_not_filed_twice(
        write_config, relay, store_url) -> None:  # type: ignore[no-untyped-def]
    """The relay is stopped (SIGTERM) while a create is under way and its answer is late
    past shutdown_seconds: the delivery is handed back, and the next start takes it over
    as from a worker that died. The server offers no search to tell whether the first
    create filed: the delivery waits as `unknown`, and is not filed a second time."""
    with SukiStandIn() as suki, FhirStandIn("generic", conditional_create=False,
                                            search=False) as ehr:
        cfg = write_config(fhir_config(ehr, suki, "generic", ehr.oauth()))
        settings = yaml.safe_load(cfg.read_text())
        settings["delivery"]["shutdown_seconds"] = 1
        cfg.write_text(yaml.safe_dump(settings))
        first = relay(cfg)
        ehr.late_after_store = 60.0  # stored; the answer comes long after the stop
        event_id = post_signed(first.webhook, body()).json()["event_id"]
        wait_until(lambda: len(ehr.documents) == 1, message="the note stored, answer pending")
        assert first.stop() == 0
        assert "released unfinished deliveries" in first.logs()
        store = open_test_store(store_url, cfg.parent)
        assert [d.state for d in store.deliveries(event_id=event_id)] == ["pending"]
        relay(cfg)
        settled = wait_until(lambda: [d.state for d in store.deliveries(event_id=event_id)
                                      if d.state in ("done", "failed", "unknown")],
                             timeout=30, message="the delivery settled after the restart")
        ehr.sink.release()
        assert settled == ["unknown"]  # in doubt, not filed again
        (d,) = store.event(event_id).deliveries  # type: ignore[union-attr]
        assert [a.outcome for a in d.attempts] == ["lost", "unknown"]
        posts, documents = len(ehr.posts), len(ehr.documents)  # counts: no payload shown
        assert (posts, documents) == (1, 1)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_an_unknown_outcome_waits_for_an_operator_and_is_settled(
        write_config, local_relay, relay_log, sink) -> None:  # type: ignore[no-untyped-def]
    """A server that offers neither conditional create nor search hangs up after storing:
    the delivery is `unknown` (not retried, not failed), listed, counted, alerted through
    on_failure; `resolve --filed` settles it done, `--not-filed` sends it again."""
    alerts = sink()
    with SukiStandIn() as suki, FhirStandIn("generic", conditional_create=False,
                                            search=False) as ehr:
        config = fhir_config(ehr, suki, "generic", ehr.oauth())
        config["actions"]["alert"] = {"type": "http", "url": alerts.url,
                                      "body": '{"state": "{{ failed.state }}"}'}
        config["on_failure"] = ["alert"]
        cfg = write_config(config)
        r = local_relay(cfg)
        ehr.drop_after_store = 2
        first, second = r.accept(body()), r.accept(body())

        def states(event_id: str) -> list[str]:
            return [d.state for d in r.store.deliveries(event_id=event_id)
                    if d.action == "file-note"]

        wait_until(lambda: states(first) == ["unknown"] and states(second) == ["unknown"],
                   message="both deliveries in doubt")
        wait_until(lambda: len(alerts.received) == 2, message="on_failure alerted")
        assert {a.json()["state"] for a in alerts.received} == {"unknown"}
        assert len(ehr.posts) == 2 and len(ehr.documents) == 2  # never sent twice
        assert r.store.stats().deliveries["unknown"] == 2
        listed = cli_here("deliveries", "--state", "unknown", "--json", "-c", str(cfg),
                          cwd=cfg.parent)
        assert listed.returncode == 0, listed.stderr
        ids = {row["event_id"]: row["id"] for row in json.loads(listed.stdout)}
        assert set(ids) == {first, second}
        doc_ids = list(ehr.documents)
        done = cli_here("resolve", ids[first], "--filed", f"DocumentReference/{doc_ids[0]}",
                        "-c", str(cfg), cwd=cfg.parent)
        assert done.returncode == 0, done.stderr
        assert states(first) == ["done"]
        del ehr.documents[doc_ids[1]]  # the operator found it was not filed after all
        sent = cli_here("resolve", ids[second], "--not-filed", "-c", str(cfg), cwd=cfg.parent)
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: states(second) == ["done"], message="sent again, and filed")
        assert len(ehr.posts) == 3 and len(ehr.documents) == 2
        again = cli_here("resolve", ids[first], "--not-filed", "-c", str(cfg), cwd=cfg.parent)
        assert again.returncode == 1 and "not in state unknown" in again.stderr
        bad = cli_here("resolve", ids[first], "--filed", "junk", "-c", str(cfg), cwd=cfg.parent)
        assert bad.returncode == 1
        (d,) = [x for x in r.store.event(first).deliveries if x.delivery.action == "file-note"]
        assert [a.outcome for a in d.attempts] == ["unknown", "resolved"]
        assert d.attempts[-1].note.endswith(f"filed DocumentReference/{doc_ids[0]}")
        logs = relay_log.text()
        for secret in ("PHI-NOTE", "stable angina", "ACCESS-TOKEN", "CLIENT-SECRET"):
            assert secret not in logs


def test_the_jwks_url_is_served_on_the_webhook_port(write_config, relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key = smart.write_new_key(tmp_path / "k.pem", "ES384")
    with SukiStandIn() as suki, FhirStandIn("oracle") as ehr:
        config = fhir_config(ehr, suki, "oracle", ehr.smart(key.path),
                             period={"end": "{{ received_at }}"})
        proc = relay(write_config(config))
        answer = requests.get(proc.url + "/.well-known/jwks.json", timeout=5)
        assert answer.status_code == 200
        assert answer.json() == smart.jwk_set([key])
        assert "PRIVATE" not in proc.logs()
