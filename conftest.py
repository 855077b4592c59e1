"""Install the example plugin packages of plugins/ (and the test plugin of tests/plugins/)
into this environment, as a user would."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
PLUGINS = {"suki_relay_pagerduty": HERE / "plugins" / "suki-relay-pagerduty",
           "suki_relay_probe": HERE / "tests" / "plugins" / "suki-relay-probe"}


def pytest_sessionstart(session: object) -> None:
    for module, path in PLUGINS.items():
        if importlib.util.find_spec(module) is None:
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                            "--no-build-isolation", str(path)], check=True, timeout=300)
