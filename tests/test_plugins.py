"""One way in: built-in and third-party actions through the same entry point group."""

from __future__ import annotations

from pathlib import Path

import pytest

from suki_relay.deliver.action import Action, Option
from suki_relay.deliver.registry import discover
from suki_relay.testing import Reply, unique_body, wait_until

from .conftest import check_fails, run_cli

REPO = Path(__file__).resolve().parents[1]
BUILT_IN = {"http", "email", "slack", "fetch_note", "fhir", "sql", "hl7v2"}


def test_built_ins_come_through_the_entry_point_group() -> None:
    found = discover()
    assert set(found) >= BUILT_IN
    for name in BUILT_IN:
        assert found[name].package == "suki-relay", name


@pytest.mark.parametrize("name", sorted(discover()))
def test_every_action_type_declares_its_options_well(name: str) -> None:
    found = discover()[name]
    assert found.cls is not None and issubclass(found.cls, Action), found.error
    assert found.cls.description, "a one-line description, shown by `suki-relay plugins`"
    assert found.cls.deliver is not Action.deliver
    for option, spec in found.cls.options.items():
        assert isinstance(spec, Option), option
        assert not (spec.required and spec.default is not None), option
        if spec.secret:
            assert not spec.template, f"{option}: a secret is not rendered from the payload"


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_built_in_is_documented(name: str) -> None:
    """In the README's section on it, or on a page of its own under docs/actions/."""
    page = REPO / "docs" / "actions" / f"{name}.md"
    text = page.read_text() if page.exists() else (REPO / "README.md").read_text()
    assert f"type: {name}" in text
    assert f"# `{name}`" in text
    for option in discover()[name].cls.options:  # type: ignore[union-attr]
        assert f"`{option}`" in text, f"{name}.{option} is not documented"
    assert f"`{name}`" in (REPO / "README.md").read_text(), "named in the README"


def test_plugins_command_lists_the_third_party_package(tmp_path: Path) -> None:
    result = run_cli("plugins", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("pagerduty"))
    assert "suki-relay-pagerduty" in line and "0.1.0" in line


def test_check_validates_third_party_options(tmp_path: Path) -> None:
    report = check_fails(tmp_path, """
receiver: {secret: s}
actions:
  page:
    type: pagerduty
    routing_key: k
    severity: apocalyptic
""")
    assert "actions.page.severity: expected one of" in report


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_signed_event_reaches_the_third_party_action(write_config, local_relay,
                                                       sink) -> None:  # type: ignore[no-untyped-def]
    pd = sink(default=Reply(202, b'{"status": "success"}'))
    cfg = write_config({
        "actions": {"page": {"type": "pagerduty", "routing_key": "RK", "events_url": pd.url}},
        "rules": [{"name": "failures", "when": {"status": "failure"}, "do": ["page"]}],
    })
    local_relay(cfg).accept(unique_body("failure"))
    got = wait_until(lambda: pd.received, message="the PagerDuty event")[0].json()
    assert got["routing_key"] == "RK" and got["event_action"] == "trigger"
