"""The suite needs the example plugin (plugins/suki-relay-pagerduty) and the test plugin
(tests/plugins/suki-relay-probe) installed, as a user installs a plugin; the test command
installs them (docs/development.md, .ci/run). Without them the suite stops at once and
says so, instead of failing test by test."""

from __future__ import annotations

import importlib.util

import pytest

PLUGINS = {"suki_relay_pagerduty": "plugins/suki-relay-pagerduty",
           "suki_relay_probe": "tests/plugins/suki-relay-probe"}


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [path for module, path in PLUGINS.items() if importlib.util.find_spec(module) is None]
    if missing:
        pytest.exit("install the plugins the suite tests first: pip install "
                    + " ".join(f"-e {path}" for path in missing), returncode=4)
