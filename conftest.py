"""Install the example plugin packages of plugins/ into this environment, as a user would."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

PLUGINS = {"suki_relay_pagerduty": Path(__file__).parent / "plugins" / "suki-relay-pagerduty"}


def pytest_sessionstart(session: object) -> None:
    for module, path in PLUGINS.items():
        if importlib.util.find_spec(module) is None:
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                            "--no-build-isolation", str(path)], check=True, timeout=300)
