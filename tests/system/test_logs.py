"""The log output of a real `suki-relay serve`: no PHI, no secrets, whatever happens."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from suki_relay.testing import SECRET, Reply, SukiStandIn, post_signed, unique_body, wait_until

from ..conftest import http_action, open_test_store

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
                    # passes check (the samples have no `odd`), fails on the event below
                    "bad-template": http_action(failing.url, body="{% if event.odd is defined %}"
                                                "{{ event.odd.nope }}{% endif %}")},
        "rules": [{"name": "notes", "when": {"status": "success"}, "do": ["save"]},
                  {"name": "failures", "when": {"status": "failure"},
                   "do": ["broken", "bad-template"]}]})
    r = relay(cfg)
    post_signed(r.webhook, unique_body("success"))
    post_signed(r.webhook, unique_body("failure", odd={}))
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


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_fetched_notes_and_ehr_credentials_never_reach_the_logs(write_config, relay, sink,  # type: ignore[no-untyped-def]
                                                                tmp_path: Path) -> None:
    """A real `suki-relay serve` running both recipes (the note over HTTP with `fetch:`,
    and into a FHIR server with OAuth2), through a lost answer, a 401, a refused token
    and an OperationOutcome quoting the note: its log output holds none of the note, the
    client secret, the token or Suki's credentials, and neither does the store."""
    from ..fhir_standin import CLIENT_SECRET, FhirStandIn, outcome  # needs the dev extra

    suki, ehr, app = SukiStandIn(), FhirStandIn(), sink(replies=[Reply(500)])
    try:
        ehr.lose_answers = 1
        ehr.scripted = [outcome(401, "login"), outcome(422, "processing",
                                                       "PHI-NOTE-TEXT quoted by the server")]
        quick = {"initial_seconds": 0.1, "max_seconds": 0.3, "max_attempts": 6}
        cfg = write_config({"suki": suki.settings(), "actions": {
            "note-to-app": {"type": "http", "url": app.url, "fetch": ["contents"], "retry": quick,
                            "body": '{"text": {{ fetched.contents | note_text | json }}}'},
            "note-to-ehr": {"type": "fhir", "base_url": ehr.base_url, "retry": quick,
                            "subject": "Patient/{{ event.session_id }}", "auth": ehr.oauth()}},
            "rules": [{"name": "notes", "when": {"status": "success"},
                       "do": ["note-to-app", "note-to-ehr"]}]})
        r = relay(cfg, workers=1)
        for _ in range(2):
            post_signed(r.webhook, unique_body("success"))
        store = open_test_store("sqlite:///relay.db", cfg.parent)
        wait_until(lambda: len(store.deliveries()) == 4 and {
            d.state for d in store.deliveries()} <= {"done", "failed"}, timeout=30,
            message="all deliveries finished")
        assert sorted(d.state for d in store.deliveries()) == ["done", "done", "done", "failed"]
        r.stop()
        logs = r.logs()
        assert "note-to-app" in logs and "note-to-ehr" in logs
        for needle in ("PHI-NOTE", "stable angina", "follow up", CLIENT_SECRET, "ACCESS-TOKEN",
                       "c0ffee", "pt-SECRET", "tok-1"):
            assert needle not in logs, needle
        stored = b"".join(p.read_bytes() for p in cfg.parent.glob("relay.db*"))
        assert stored and b"PHI-NOTE" not in stored and b"ACCESS-TOKEN" not in stored
    finally:
        suki.stop()
        ehr.stop()
