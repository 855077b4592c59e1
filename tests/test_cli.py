"""The command line: routes test (dry run) and its exit codes (send: tests/system/test_serve.py;
the store commands: test_cli_store.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .conftest import cli_here

CONFIG = """
receiver: {secret: test-secret}
store: sqlite:///relay.db
actions:
  ehr:
    type: http
    url: http://127.0.0.1:9/ehr
    headers: {Authorization: "Bearer very-secret-token"}
  alert:
    type: slack
    webhook_url: https://hooks.slack.com/services/T000/B000/SECRETPART
rules:
  - {name: failures, when: {status: failure}, do: [alert, ehr]}
  - {name: notes, when: {status: success}, do: [ehr], stop: true}
"""


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "actions.yaml").write_text(CONFIG)
    return cli_here(*args, cwd=tmp_path)


def test_routes_test_shows_rendered_actions_with_secrets_masked(tmp_path: Path) -> None:
    result = cli(tmp_path, "routes", "test", "failure")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "rules matched: failures" in out
    assert "action alert (slack)" in out and "action ehr (http)" in out
    assert "ERROR_CODE_TRANSCRIPTION" in out
    assert "very-secret-token" not in out and "SECRETPART" not in out


def test_routes_test_json_and_expectations(tmp_path: Path) -> None:
    data = json.loads(cli(tmp_path, "routes", "test", "success", "--json").stdout)
    assert data["rules"] == ["notes"] and [a["action"] for a in data["actions"]] == ["ehr"]
    assert cli(tmp_path, "routes", "test", "failure", "--expect", "failures").returncode == 0
    assert cli(tmp_path, "routes", "test", "failure", "--expect", "alert", "ehr").returncode == 0
    wrong = cli(tmp_path, "routes", "test", "failure", "--expect", "notes")
    assert wrong.returncode == 1 and "rules matched: failures" in wrong.stderr
    assert cli(tmp_path, "routes", "test", "timeout", "--expect").returncode == 0
    assert cli(tmp_path, "routes", "test", "failure", "--expect", "nope").returncode == 1


def test_routes_test_reads_a_file(tmp_path: Path) -> None:
    body = tmp_path / "mine.json"
    body.write_text(json.dumps({"status": "success", "session_id": "s", "encounter_id": "e"}))
    result = cli(tmp_path, "routes", "test", str(body), "--expect", "notes")
    assert result.returncode == 0, result.stderr
