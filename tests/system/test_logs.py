"""The log output of a real `suki-relay serve`: no PHI, no secrets, whatever happens."""

from __future__ import annotations

import json
import re
from pathlib import Path

from suki_relay.testing import SECRET, Reply, post_signed, unique_body, wait_until

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
