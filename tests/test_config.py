"""actions.yaml: substitution, validation with locations, check at the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from suki_relay.config import parse_config
from suki_relay.errors import ConfigError

from .conftest import check_fails, run_cli

REPO = Path(__file__).resolve().parents[1]


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "actions.yaml"
    path.write_text(text)
    return parse_config(text, path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return [str(p) for p in info.value.problems]


MINIMAL = """
receiver:
  secrets: ["${RELAY_TEST_SECRET}"]
actions:
  fwd: {type: http, url: "http://127.0.0.1:9/x"}
rules:
  - {name: all, when: {}, do: [fwd]}
"""


def test_environment_and_file_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    monkeypatch.setenv("RELAY_TEST_SECRET", "from-env")
    config = load(tmp_path, f"""
receiver:
  secrets: ["${{RELAY_TEST_SECRET}}", "${{file:{secret_file}}}", "${{UNSET_VAR_X:-fallback}}"]
  tolerance_seconds: 60
""")
    assert config.receiver.secrets == ("from-env", "from-file", "fallback")
    assert config.receiver.tolerance_seconds == 60.0
    assert config.store_url == "sqlite:///suki-relay.db"


def test_missing_variable_and_file_are_named(tmp_path: Path) -> None:
    found = problems(tmp_path, """
receiver:
  secrets: ["${NOT_SET_ANYWHERE_42}", "${file:/nonexistent/secret}"]
""")
    assert any("NOT_SET_ANYWHERE_42 is not set" in p and ":3:" in p for p in found)
    assert any("/nonexistent/secret" in p for p in found)


def test_every_problem_is_listed_with_its_location(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_TEST_SECRET", "s")
    found = problems(tmp_path, """receiver:
  secrets: ["${RELAY_TEST_SECRET}"]
actions:
  fwd:
    type: http
    url: "http://127.0.0.1:9/x"
    timout_seconds: 3
  nope:
    type: carrier-pigeon
  bad-template:
    type: http
    url: "http://127.0.0.1:9/{{ event.session_id"
rules:
  - name: r1
    when: {status: {regexp: x}}
    do: [fwd, missing-action]
recievers: {}
""")
    text = "\n".join(found)
    assert "actions.yaml:7: actions.fwd.timout_seconds: unknown option" in text
    assert "actions.yaml:9: actions.nope.type: unknown action type 'carrier-pigeon'" in text
    assert "actions.bad-template.url: template error" in text
    assert "rule 'r1'.when.status: expected one operator" in text
    assert "rule 'r1'.do: unknown action 'missing-action'" in text
    assert "actions.yaml:17: recievers: unknown key" in text
    assert len(found) == 6


def test_option_types_are_checked(tmp_path: Path) -> None:
    found = problems(tmp_path, """
receiver: {secret: s}
actions:
  fwd: {type: http, url: 42, max_concurrency: 0, retry: {max_attempts: many}}
""")
    text = "\n".join(found)
    assert "actions.fwd.url: expected a string, got int" in text
    assert "actions.fwd.max_concurrency: expected a positive integer" in text
    assert "actions.fwd.retry.max_attempts: expected int" in text


def test_duplicate_keys_are_reported(tmp_path: Path) -> None:
    found = problems(tmp_path, "receiver: {secret: s}\nstore: sqlite:///a.db\nstore: sqlite:///b.db\n")
    assert any("store: key appears twice" in p for p in found)


def test_check_passes_on_the_shipped_config() -> None:
    result = run_cli("check", cwd=REPO, env={"SUKI_WEBHOOK_SECRET": "x"})
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_renders_templates_against_the_samples(tmp_path: Path) -> None:
    report = check_fails(tmp_path, """
receiver: {secret: s}
actions:
  alert:
    type: http
    url: http://127.0.0.1:9/x
    body: "{{ event.error_code }} {{ event.eror_detail }}"
rules:
  - {name: failures, when: {status: failure}, do: [alert]}
""")
    assert "actions.alert: rendering against the failure sample" in report
    assert "eror_detail" in report


def test_check_without_the_secret_names_the_variable_and_leaks_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SUKI_WEBHOOK_SECRET"}
    result = subprocess.run([sys.executable, "-m", "suki_relay.cli", "check"], cwd=REPO,
                            text=True, capture_output=True, timeout=60, env=env)
    assert result.returncode == 1
    assert "SUKI_WEBHOOK_SECRET is not set" in result.stderr
    assert "Traceback" not in result.stderr
