"""`suki-relay stand-in suki|fhir`: the walk the EHR recipe opens with, as a user runs it
(every process real, stopped by PID)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import pytest
import requests
import yaml

from suki_relay.testing import SukiStandIn, post_signed, unique_body, wait_until

from ..conftest import cli_here
from ..support.relay import RelayProcess

pytest.importorskip("fhir.resources")


class Running:
    """A `suki-relay stand-in ...` process; its stdout read line by line in a thread."""

    def __init__(self, *args: str, cwd: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "suki_relay.cli.main", "stand-in",
                                      *args], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines.put(line)

    def until(self, predicate: Any, timeout: float = 20) -> list[str]:
        def more() -> bool:
            while not self.lines.empty():
                self.seen.append(self.lines.get())
            return bool(predicate("".join(self.seen)))

        wait_until(more, timeout, 0.05, "the stand-in's output")
        return self.seen

    def config(self) -> dict[str, Any]:
        text = "".join(self.seen)
        return dict(yaml.safe_load(text.split("In actions.yaml:\n", 1)[1].split("\nfiled")[0]))

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(10)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def test_a_stand_in_started_by_a_person_runs_until_stopped() -> None:
    suki = SukiStandIn(lifetime=None)
    try:
        assert not suki.sink._timer.is_alive()  # no 120-second end
        assert requests.post(suki.url + "/api/v1/auth/login", json=suki.settings(),
                             timeout=5).status_code == 200
    finally:
        suki.stop()


def test_the_five_minute_walk_files_a_note_into_the_epic_stand_in(tmp_path: Path) -> None:
    """stand-in suki, stand-in fhir --profile epic, keys new, serve, send: the note is filed
    in the stand-in with a token got by a client assertion it verified against the
    relay's own JWK Set URL."""
    cfg = tmp_path / "actions.yaml"
    relay = RelayProcess(cfg, workers=1)
    suki = Running("suki", cwd=tmp_path)
    ehr = Running("fhir", "--profile", "epic", "--jwks-url",
                  relay.url + "/.well-known/jwks.json", cwd=tmp_path)
    try:
        suki.until(lambda text: "partner_token" in text)
        ehr.until(lambda text: "scope:" in text)
        assert cli_here("keys", "new", "ehr-key.pem", cwd=tmp_path).returncode == 0
        config = {"receiver": {"secrets": ["walk-secret"]}, **suki.config(), **ehr.config(),
                  "rules": [{"name": "notes", "when": {"status": "success"},
                             "do": ["note-to-ehr"]}]}
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        assert cli_here("check", cwd=tmp_path).returncode == 0
        relay.start()
        answer = post_signed(relay.webhook, unique_body("success"), secret="walk-secret")
        assert answer.status_code == 200
        ehr.until(lambda text: "filed DocumentReference/eDoc0001 for Patient/example-patient-1"
                  in text, timeout=30)
    finally:
        relay.stop(timeout=15)
        for standin in (suki, ehr):
            assert standin.stop() == 0  # a clean end on SIGTERM


def test_the_fhir_stand_in_serves_a_statement_as_large_as_an_ehrs(tmp_path: Path) -> None:
    """`--capability-bytes` reaches the stand-in the tests use: a statement of several MB
    with DocumentReference in it. `--page-size` is taken, and a negative count refused."""
    ehr = Running("fhir", "--capability-bytes", "3000000", "--page-size", "1", cwd=tmp_path)
    try:
        ehr.until(lambda text: "scope:" in text)
        base = ehr.config()["actions"]["note-to-ehr"]["base_url"]
        statement = requests.get(base + "/metadata", timeout=10)
        assert len(statement.content) > 3_000_000
        resources = statement.json()["rest"][0]["resource"]
        assert "DocumentReference" in [r["type"] for r in resources]
    finally:
        assert ehr.stop() == 0
    bad = cli_here("stand-in", "fhir", "--page-size", "-1", cwd=tmp_path)
    assert bad.returncode == 2 and "0 or more" in bad.stderr
