"""The public plugin surface: what suki_relay.plugin exports, and what every action gets."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import suki_relay
import suki_relay.plugin as plugin
from suki_relay.deliver import outbound
from suki_relay.deliver.registry import discover

REPO = Path(__file__).resolve().parents[1]


def test_the_plugin_module_exports_exactly_this() -> None:
    assert sorted(plugin.__all__) == sorted([
        "CONTENT_RELATIONS", "MASK", "RELATIONS", "Action", "ConfigError", "Delivery",
        "DeliveryError", "InDoubtError", "Option", "PermanentError", "Problem", "RelayContext", "RelayError",
        "RetryableError", "deadline", "map_strings", "mask_secret_keys", "new_session",
        "note_text", "oauth", "outbound", "raise_for_status", "render_value", "send",
        "slack_escape", "unknown_relations",
    ])
    star: dict[str, object] = {}
    exec("from suki_relay.plugin import *", star)  # what a plugin author's import gets
    assert sorted(k for k in star if not k.startswith("__")) == sorted(plugin.__all__)


def test_version_is_single_sourced_with_the_package_metadata() -> None:
    from importlib.metadata import version

    assert suki_relay.__version__ == version("suki-relay")
    assert 'dynamic = ["version"]' in (REPO / "pyproject.toml").read_text()


def test_no_built_in_action_overrides_init() -> None:
    built_in = [t.cls for t in discover().values() if t.value.startswith("suki_relay.")]
    assert len(built_in) >= 4
    for cls in built_in:
        assert isinstance(cls, type) and issubclass(cls, plugin.Action), cls
        assert "__init__" not in vars(cls), cls


def test_every_action_has_a_session_that_never_reads_netrc(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain requests.Session adds Basic auth from ~/.netrc for the target's host; an
    action's session (action.http, outbound.new_session) must not."""
    from suki_relay.testing import Reply, Sink, build_action, make_delivery, plant_netrc

    plant_netrc(monkeypatch, tmp_path)
    with Sink(default=Reply(200, b"{}")) as target:
        action = build_action("http", {"url": target.url}, tmp_path)
        session = action.http
        assert session is action.http  # one per thread, reused
        action.deliver(make_delivery("failure"))
        outbound.new_session().get(target.url, timeout=10)
        assert len(target.received) == 2
        assert all("Authorization" not in got.headers for got in target.received)


def test_the_example_plugin_imports_only_the_public_module() -> None:
    source = (REPO / "plugins/suki-relay-pagerduty/suki_relay_pagerduty/__init__.py").read_text()
    imported = {node.module for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(ast.parse(source))
                 if isinstance(node, ast.Import) for alias in node.names}
    relay = {m for m in imported if m.startswith("suki_relay")}
    assert relay == {"suki_relay.plugin"}, relay
    assert "requests" not in imported and "self.http" in source


def test_the_plugin_contract_reaches_suki_settings_only_through_relay_suki() -> None:
    assert list(inspect.signature(plugin.RelayContext).parameters) == ["templates", "base_dir",
                                                                       "suki"]
    assert "suki" not in inspect.signature(plugin.Action).parameters
