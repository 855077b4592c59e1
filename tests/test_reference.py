"""The configuration reference comes from the declarations `check` uses: every option
has help, `suki-relay plugins --options TYPE` prints it, and the manual shows it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from suki_relay.config import reference
from suki_relay.config.load import ACTION_OPTIONS, SECTIONS
from suki_relay.config.routing import RULE_OPTIONS
from suki_relay.options import Option

from .conftest import cli_here

# the built-in types, and the example third-party plugin that shows how to document one
DOCUMENTED = {name for name, t in reference.action_types().items()
              if t.package in ("suki-relay", "suki-relay-pagerduty")}


def test_the_documented_types_are_found() -> None:
    assert {"http", "email", "slack", "fhir", "fetch_note", "sql", "pagerduty"} <= DOCUMENTED


def test_every_section_option_has_help() -> None:
    assert reference.missing_help(SECTIONS) == [], "declare help= on each setting()/Option"


def test_every_option_every_action_takes_has_help() -> None:
    assert reference.missing_help(ACTION_OPTIONS) == []


def test_every_option_of_a_rule_has_help() -> None:
    assert reference.missing_help(RULE_OPTIONS) == []


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_every_option_of_each_action_type_has_help(name: str) -> None:
    found = reference.action_type(name)
    assert found.cls is not None and found.cls.description
    assert reference.missing_help(found.cls.options) == [], f"{name}: declare help= on each Option"


def test_an_option_without_help_is_found_nested_too() -> None:
    from suki_relay.config.sections import Receiver

    options = {"a": Option(str, help="has it"), "b": Option(int), "receiver": Option(Receiver)}
    missing = reference.missing_help(options)
    assert "b" in missing and "receiver" in missing and "a" not in missing
    assert "receiver.secrets" not in missing  # it has help; the section itself has none here


def test_plugins_options_prints_a_type_and_what_every_action_takes() -> None:
    result = cli_here("plugins", "--options", "http")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("http (suki-relay ")
    for name, opt in reference.action_type("http").cls.options.items():  # type: ignore[union-attr]
        line = next(ln for ln in out.splitlines() if ln.startswith(f"{name} "))
        assert opt.help in line
    assert "method" in out and "one of POST, PUT, PATCH" in out
    assert "retry.max_attempts" in out and "every action also takes" in out


def test_plugins_options_of_a_third_party_type_as_json() -> None:
    result = cli_here("plugins", "--options", "pagerduty", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["package"] == "suki-relay-pagerduty"
    options = {o["name"]: o for o in data["options"]}
    assert options["routing_key"]["required"] and options["routing_key"]["secret"]
    assert options["severity"]["choices"] == ["critical", "error", "warning", "info"]
    assert options["summary"]["template"] and options["summary"]["default"].startswith("Suki")
    assert {o["name"] for o in data["every_action"]} >= {"max_concurrency", "retry", "fetch"}


def test_plugins_options_of_an_unknown_type_fails_cleanly() -> None:
    result = cli_here("plugins", "--options", "nope")
    assert result.returncode == 1
    assert "unknown action type 'nope'" in result.stderr and "http" in result.stderr


def test_the_reference_tables_name_every_option_and_its_default() -> None:
    text = reference.markdown_sections()
    for row in reference.rows(SECTIONS):
        assert f"`{row.name.split('.')[-1]}`" in text and row.help.replace("|", "\\|") in text
    assert "`300`" in text and "`/webhooks/notification`" in text
    fetch_note = reference.markdown_action("fetch_note")
    assert "{{ event.encounter_id | default(" in fetch_note  # a code span keeps its |


def test_the_built_manual_shows_the_reference(tmp_path: Path) -> None:
    from .test_docs import REPO, build, need_mkdocs

    need_mkdocs()
    assert build(REPO, tmp_path).returncode == 0
    page = (tmp_path / "reference" / "index.html").read_text()
    assert "read_timeout_seconds" in page and "delivery threads per process" in page
    assert "max_concurrency" in page and "retry.max_attempts" in page
    http = (tmp_path / "actions" / "http" / "index.html").read_text()
    assert "sign_window_seconds" in http and "bounds the whole request, not each read" in http
