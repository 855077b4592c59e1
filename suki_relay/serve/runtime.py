"""What the processes of one running relay share on this machine, with no flags needed.

The workers of one gunicorn master (and the workers that replace them after a reload or a
crash) share two things:

* prometheus-client's multiprocess directory, so /metrics sums every worker's counts;
* the last config that loaded, so a reload with a broken actions.yaml keeps serving it.

Both live in a folder named after the master: its pid and its start time (a pid alone is
reused), under ``$TMPDIR/suki-relay-<uid>/``, owner-only. Whoever knows the master says
which: gunicorn.conf.py's code runs in the master (``share(os.getpid())``, hooks.py);
without that file, a worker's master is its parent (wsgi.py). ``suki-relay serve`` sets
PROMETHEUS_MULTIPROC_DIR itself and keeps the last good config in its master's memory.

Nothing here may import prometheus_client: its mode is fixed when it is first imported.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

ENV_METRICS = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own setting


def _started(pid: int) -> str:
    """A process's start time (clock ticks since boot), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def master_dir(master: int) -> Path:
    """The owner-only folder shared by one gunicorn master's workers (made if missing);
    folders of masters that are gone are removed on the way."""
    base = Path(tempfile.gettempdir()) / f"suki-relay-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    if base.stat().st_uid != os.getuid():
        raise RuntimeError(f"{base} belongs to another user")
    os.chmod(base, 0o700)
    for old in base.iterdir():
        pid = old.name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != master and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = base / f"{master}-{_started(master)}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def share(master: int) -> Path:
    """The folder the workers of gunicorn master ``master`` share, with prometheus-client's
    multiprocess directory set inside it unless one is set already. Call before anything
    imports prometheus_client."""
    folder = master_dir(master)
    if not os.environ.get(ENV_METRICS):
        metrics = folder / "metrics"
        metrics.mkdir(mode=0o700, exist_ok=True)
        os.environ[ENV_METRICS] = str(metrics)
    return folder


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, owner-only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def first_to_claim(path: Path) -> bool:
    """True for exactly one caller among the processes sharing ``path``'s folder."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return False
    return True


def unclaim(folder: Path, pattern: str) -> None:
    for p in folder.glob(pattern):
        with contextlib.suppress(OSError):
            p.unlink()
