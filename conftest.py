"""The suite needs the example plugin (plugins/suki-relay-pagerduty) and the test plugin
(tests/plugins/suki-relay-probe) installed, as a user installs a plugin; the test command
installs them (docs/development.md, .ci/run). Without them the suite stops at once and
says so, instead of failing test by test.

The suite runs in several processes at once (pytest-xdist, ``-n auto`` in pyproject.toml):
its tests mostly wait on the servers they start, so it runs twice as many workers as the
machine has cores; PYTEST_XDIST_AUTO_NUM_WORKERS sets the number (.ci/run shares the
machine between two Pythons that way), ``-n 0`` runs the tests in this process (a debugger,
one test)."""

from __future__ import annotations

import importlib.util
import os

import pytest

PLUGINS = {"suki_relay_pagerduty": "plugins/suki-relay-pagerduty",
           "suki_relay_probe": "tests/plugins/suki-relay-probe"}


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [path for module, path in PLUGINS.items() if importlib.util.find_spec(module) is None]
    if missing:
        pytest.exit("install the plugins the suite tests first: pip install "
                    + " ".join(f"-e {path}" for path in missing), returncode=4)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: PYTEST_XDIST_AUTO_NUM_WORKERS if set, else two per usable core."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").isdigit():
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    return 2 * len(os.sched_getaffinity(0))
