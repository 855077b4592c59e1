"""The JSON Schema of actions.yaml (`suki-relay schema`), generated from the declarations
`check` uses: the shipped config and every recipe in the manual validate against it, and
broken configs fail it at the key (and line) `check` reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from suki_relay.config.load import parse_config
from suki_relay.config.schema import MODELINE, schema
from suki_relay.config.yaml_lines import load_yaml
from suki_relay.errors import ConfigError
from suki_relay.options import line_of

from .conftest import cli_here
from .test_docs_recipes import CONFIGS

REPO = Path(__file__).resolve().parents[1]
SCHEMA = schema()
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)


def errors(text: str) -> list[jsonschema.ValidationError]:
    return list(VALIDATOR.iter_errors(yaml.safe_load(text)))


def places(error: jsonschema.ValidationError) -> set[str]:
    """The dotted keys an error is about (an unexpected or missing key: that key)."""
    path = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        keys = set(error.instance) - set(error.schema.get("properties", {}))
    elif error.validator == "required":
        keys = {k for k in error.validator_value if k not in error.instance}
    else:
        return {".".join(path)}
    return {".".join([*path, str(k)]) for k in keys}


def test_the_schema_is_a_valid_draft_7_schema_printed_by_the_cli() -> None:
    result = cli_here("schema")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    jsonschema.Draft7Validator.check_schema(printed)
    assert printed == SCHEMA
    action = printed["properties"]["actions"]["additionalProperties"]
    assert {"http", "email", "slack", "fhir", "fetch_note", "sql"} <= set(
        action["properties"]["type"]["enum"])
    assert "pagerduty" in action["properties"]["type"]["enum"], "installed plugins included"
    receiver = printed["properties"]["receiver"]
    assert receiver["properties"]["tolerance_seconds"]["description"]
    assert receiver["properties"]["tolerance_seconds"]["default"] == 300


def test_the_shipped_actions_yaml_validates() -> None:
    assert errors((REPO / "actions.yaml").read_text()) == []


@pytest.mark.parametrize(("where", "text"), CONFIGS, ids=[w for w, _ in CONFIGS])
def test_every_full_config_in_the_manual_validates(where: str, text: str) -> None:
    assert [e.message for e in errors(text)] == [], where


def test_init_writes_the_modeline_and_the_schema_it_names(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUKI_WEBHOOK_SECRET", "s")
    assert cli_here("init", str(tmp_path)).returncode == 0
    text = (tmp_path / "actions.yaml").read_text()
    assert text.splitlines()[0] == MODELINE == "# yaml-language-server: $schema=actions.schema.json"
    written = json.loads((tmp_path / "actions.schema.json").read_text())
    assert written == SCHEMA
    assert list(jsonschema.Draft7Validator(written).iter_errors(yaml.safe_load(text))) == []
    assert cli_here("-c", str(tmp_path / "actions.yaml"), "check").returncode == 0


GOOD = """\
receiver:
  secret: "${SUKI_WEBHOOK_SECRET}"
  tolerance_seconds: ${TOLERANCE}
delivery:
metrics: {enabled: false}
suki: {base_url: "https://sdp.suki.ai", partner_id: 7, partner_token: "${SUKI_TOKEN}"}
actions:
  page:
    type: pagerduty
    routing_key: ${PD_KEY}
    severity: warning
  hook:
    type: http
    url: https://example.org/hook
    max_concurrency: 2
    retry: {max_attempts: 3}
    fetch: contents
rules:
  - name: all
    do: [page, hook]
unmatched: hook
"""


def test_what_check_accepts_the_schema_accepts() -> None:
    """`secret:` for `secrets:`, a ${VAR} where a number goes, an empty section, one
    string for a list, a number for a string-or-number, a third-party type's options."""
    parse_config(GOOD.replace("${TOLERANCE}", "300").replace("${", "x{"), Path("actions.yaml"))
    assert [e.message for e in errors(GOOD)] == []


BROKEN = {  # a valid config, one key broken: check and the schema name the same key
    "a string for a number": ("  tolerance_seconds: ${TOLERANCE}", "  tolerance_seconds: soon"),
    "a negative number": ("  tolerance_seconds: ${TOLERANCE}", "  tolerance_seconds: -5"),
    "an unknown key in a section": ("metrics: {enabled: false}", "metrics: {enabled: false, paht: /m}"),
    "an unknown top-level key": ("delivery:\n", "delivery:\nretension: {days: 3}\n"),
    "a choice not among the choices": ("    severity: warning", "    severity: loud"),
    "an option of another action type": ("    max_concurrency: 2", "    max_concurrency: 2\n    to: [a@b.c]"),
    "a required option missing": ("    routing_key: ${PD_KEY}\n", ""),
    "a nested section's range": ("retry: {max_attempts: 3}", "retry: {max_attempts: 0}"),
    "true for a number": ("    max_concurrency: 2", "    max_concurrency: true"),
    "an unknown action type": ("    type: http", "    type: htpp"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_config_fails_the_schema_where_check_reports(case: str) -> None:
    old, new = BROKEN[case]
    assert old in GOOD
    text = GOOD.replace(old, new).replace("${TOLERANCE}", "300")
    with pytest.raises(ConfigError) as raised:
        parse_config(text.replace("${", "x{"), Path("actions.yaml"))
    reported = {p.where: p.line for p in raised.value.problems if not p.warning}
    found = set().union(*(places(e) for e in errors(text)))
    assert found, f"the schema accepts {case}"
    assert found <= set(reported), (found, reported)
    doc, _ = load_yaml(text)
    for where in found:  # and at the same line
        *parents, key = where.split(".")
        mapping: Any = doc
        for p in parents:
            mapping = mapping[p]
        assert reported[where] == (line_of(mapping, key) if key in mapping else line_of(mapping))
