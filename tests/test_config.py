"""actions.yaml: substitution, validation with locations, check at the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from suki_relay.config.load import parse_config
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
    assert "actions.fwd.retry.max_attempts: expected an integer, got a string" in text


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
    assert "actions.yaml:7: actions.alert.body: rendering against the failure sample" in report
    assert "eror_detail" in report


def test_check_without_the_secret_names_the_variable_and_leaks_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SUKI_WEBHOOK_SECRET"}
    result = subprocess.run([sys.executable, "-m", "suki_relay.cli.main", "check"], cwd=REPO,
                            text=True, capture_output=True, timeout=60, env=env)
    assert result.returncode == 1
    assert "SUKI_WEBHOOK_SECRET is not set" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- one validator for every section


def _where(found: list[str], key: str) -> list[str]:
    return [p for p in found if f": {key}:" in p]


def test_a_non_numeric_suki_timeout_is_a_problem_at_its_line(tmp_path: Path) -> None:
    found = problems(tmp_path, """receiver: {secret: s}
suki:
  base_url: https://sdp.example.org
  partner_id: p
  partner_token: t
  timeout_seconds: soon
""")
    assert _where(found, "suki.timeout_seconds"), found
    assert ":6: suki.timeout_seconds: expected a number, got a string" in "\n".join(found)


@pytest.mark.parametrize("value", [".nan", ".inf", "-1", "0"])
def test_tolerance_must_be_finite_and_positive(tmp_path: Path, value: str) -> None:
    found = problems(tmp_path, f"receiver:\n  secret: s\n  tolerance_seconds: {value}\n")
    assert len(found) == 1 and ":3: receiver.tolerance_seconds: expected a" in found[0], found


@pytest.mark.parametrize("section", ["delivery", "retention", "metrics", "receiver", "suki"])
def test_a_dunder_key_is_an_unknown_option_not_a_traceback(tmp_path: Path, section: str) -> None:
    text = "receiver:\n  secret: s\n" if section != "receiver" else ""
    text += f"{section}:\n  __doc__: x\n"
    if section == "receiver":
        text += "  secret: s\n"
    found = problems(tmp_path, text)
    assert any(f"{section}.__doc__: unknown option" in p for p in found), found


def test_negative_thread_counts_and_wrong_types_are_problems(tmp_path: Path) -> None:
    found = "\n".join(problems(tmp_path, """receiver: {secret: s}
delivery:
  threads: -2
  lease_seconds: "30"
metrics: {enabled: "yes"}
retention: {days: 0}
"""))
    assert ":3: delivery.threads: expected a positive integer, got -2" in found
    assert ":4: delivery.lease_seconds: expected a number, got a string" in found
    assert "metrics.enabled: expected true or false" in found
    assert "retention.days: expected a positive number" in found


def test_store_urls_follow_one_rule_for_check_and_open(tmp_path: Path) -> None:
    from suki_relay.errors import RelayError
    from suki_relay.store import open_store, url_problem

    found = problems(tmp_path, "receiver: {secret: s}\nstore: sqlite:relative.db\n")
    assert any(":2: store: expected sqlite:///" in p for p in found), found
    with pytest.raises(RelayError) as info:
        open_store("sqlite:relative.db", tmp_path)
    assert str(url_problem("sqlite:relative.db")) in str(info.value)
    for good in ("sqlite:///relay.db", f"sqlite:///{tmp_path}/abs.db", "postgresql://h/db"):
        assert url_problem(good) is None


def test_substituted_values_are_literal_text_never_templates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from suki_relay.testing import build_action, make_delivery

    monkeypatch.setenv("EVIL", "{{ 7*7 }} {% if true %}x{% endif %}")
    action = build_action("http", {
        "url": "http://127.0.0.1:9/${EVIL}",
        "headers": {"X-A": "${EVIL}", "X-B": "{{ event.status }}/${EVIL}"},
    }, tmp_path)
    url, headers, _ = action.request(make_delivery("failure"))
    assert url == "http://127.0.0.1:9/{{ 7*7 }} {% if true %}x{% endif %}"
    assert headers["X-A"] == "{{ 7*7 }} {% if true %}x{% endif %}"
    assert headers["X-B"] == "failure/{{ 7*7 }} {% if true %}x{% endif %}"


def test_repr_shows_no_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASS_X", "pg-pass-7")
    config = load(tmp_path, """receiver: {secrets: [hook-secret-1]}
store: postgresql://relay:${PGPASS_X}@127.0.0.1:1/db
suki: {base_url: "https://sdp.example.org", partner_id: p, partner_token: partner-token-2}
""")
    shown = repr(config) + repr(config.receiver) + repr(config.suki)
    for secret in ("hook-secret-1", "partner-token-2", "pg-pass-7"):
        assert secret not in shown
    assert "tolerance_seconds=300.0" in repr(config.receiver)


def test_a_missing_variable_is_the_only_problem_reported(tmp_path: Path) -> None:
    found = problems(tmp_path, """receiver:
  secrets: ["${NOT_SET_SECRET_1}"]
suki:
  base_url: https://sdp.example.org
  partner_id: p
  partner_token: ${NOT_SET_TOKEN_2}
actions:
  chat: {type: slack, webhook_url: "${NOT_SET_SLACK_3}"}
  notes: {type: fetch_note, directory: notes}
rules:
  - {name: all, when: {}, do: [chat, notes]}
""")
    assert len(found) == 3, found
    assert all("is not set" in p for p in found), found
    assert ":2:" in found[0] and ":6:" in found[1] and ":8:" in found[2]


def test_a_suki_section_with_a_problem_is_not_called_missing(tmp_path: Path) -> None:
    found = problems(tmp_path, """receiver: {secret: s}
suki: {base_url: "https://sdp.example.org", partner_id: p, partner_token: t, timeout_seconds: -1}
actions:
  notes: {type: fetch_note, directory: notes}
""")
    assert len(found) == 1 and "suki.timeout_seconds" in found[0], found


@pytest.mark.parametrize(("text", "line", "says"), [
    ("receiver: {secret: s}\nstore sqlite:///x.db\nmetrics: {}\n", 2, "is a ':' missing?"),
    ("receiver:\n  secret: s\nrules: [1, 2\nmetrics: {}\n", 3, "not closed"),
    ("receiver:\n\tsecret: s\n", 2, "tab"),
    ("receiver: {secret: s}\nstore: a: b\n", 2, "unexpected ':'"),
])
def test_yaml_syntax_errors_name_the_right_line_plainly(tmp_path: Path, text: str, line: int,
                                                        says: str) -> None:
    found = problems(tmp_path, text)
    assert len(found) == 1 and f"actions.yaml:{line}: yaml:" in found[0] and says in found[0], found
    assert "column" not in found[0] and "<unicode string>" not in found[0]  # not PyYAML text


def test_adding_a_section_is_declarative(tmp_path: Path) -> None:
    """A section declared with setting() is validated like the built-in ones."""
    from dataclasses import dataclass

    from suki_relay.options import Option, build, setting

    @dataclass(frozen=True)
    class Spool:
        max_mb: int = setting(512, positive=True)
        mode: str = setting("fast", choices=("fast", "safe"))

    spool, found = build(Spool, {"max_mb": 0, "mode": "slow", "__x__": 1}, "spool")
    assert spool is None and len(found) == 3
    spool, found = build(Spool, {"mode": "safe"}, "spool")
    assert spool == Spool(512, "safe") and not found
    assert Option(Spool).kind is Spool
