"""Install the example plugin packages of plugins/ (and the test plugin of tests/plugins/)
into this environment, as a user would; again whenever the installed copy differs from this
checkout's (a stale copy would test yesterday's plugin)."""

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
        if not _installed_as_in_checkout(module, path / module):
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                            "--force-reinstall", "--no-build-isolation", str(path)],
                           check=True, timeout=300)


def _installed_as_in_checkout(module: str, source: Path) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return False
    installed = Path(spec.origin).parent
    return all((installed / f.name).is_file() and (installed / f.name).read_bytes() == f.read_bytes()
               for f in source.glob("*.py"))
