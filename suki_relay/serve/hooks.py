"""gunicorn's hooks for a relay: how a gunicorn worker starts and stops its parts.

``suki-relay serve`` sets them on its gunicorn. Plain gunicorn takes them from the
``gunicorn.conf.py`` that ``suki-relay init`` writes next to actions.yaml (gunicorn reads
``./gunicorn.conf.py`` from the folder it starts in by itself)::

    from suki_relay.serve import hooks

    hooks.master()  # runs in gunicorn's master: what its workers share
    post_fork = hooks.post_fork
    post_worker_init = hooks.post_worker_init
    worker_exit = hooks.worker_exit
    child_exit = hooks.child_exit

Without that file, ``suki_relay.wsgi`` falls back on ``wsgi_app()`` below: gunicorn with
no flags imports the app in each worker, after forking it, so the worker starts its parts
as it imports the app and stops them when its main thread ends. ``--preload``, which
imports the app in the master, needs the file: without it, the parts would start in the
master (its connections then copied into every worker by the fork, and no watchdog or
refusal writer in any worker), so the app refuses to load and gunicorn exits saying why.

Nothing here may import prometheus_client at import time: its mode is fixed when it is
first imported (runtime.py sets it first).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suki_relay import logs
from suki_relay.serve import runtime

if TYPE_CHECKING:
    from suki_relay.receive.app import RelayApp

installed = False  # gunicorn.conf.py set the hooks in this process's master
shared: Path | None = None  # the folder this master's workers share (runtime.py)


def master() -> None:
    """In gunicorn's master, as it reads gunicorn.conf.py (at start and at each reload):
    the folder its workers share, and metrics summed across them. Its workers inherit
    both when it forks them."""
    global installed, shared
    shared = runtime.share(os.getpid())
    installed = True


def post_fork(server: Any, worker: Any) -> None:
    """In a worker just forked: the master's log writer is not running here, and the
    lines it had queued are the master's: a writer of its own."""
    logs.forked()


def post_worker_init(worker: Any) -> None:
    """In a worker whose app is loaded (by itself, or by the master with --preload):
    start the process's parts."""
    process = getattr(getattr(worker, "wsgi", None), "process", None)
    if process is not None:
        process.start()


def worker_exit(server: Any, worker: Any) -> None:
    """A worker ends (in the worker; gunicorn also calls it in the master for a worker
    already gone, where nothing was started and there is nothing to stop)."""
    process = getattr(getattr(worker, "wsgi", None), "process", None)
    if process is not None:
        process.stop()


def child_exit(server: Any, worker: Any) -> None:
    """In the master, when a worker has ended: its metrics files count as finished."""
    if os.environ.get(runtime.ENV_METRICS):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


PRELOAD = ("gunicorn --preload imports the app in its master, before it forks the workers: "
           "it needs the gunicorn.conf.py that `suki-relay init` writes (its hooks start each "
           "worker's parts in the worker), in the folder gunicorn starts in; or leave out "
           "--preload")


def preloading() -> bool:
    """gunicorn was asked for --preload (on its command line or in GUNICORN_CMD_ARGS)."""
    return "--preload" in sys.argv or "--preload" in os.environ.get("GUNICORN_CMD_ARGS", "")


def wsgi_app() -> RelayApp:
    """What ``suki_relay.wsgi:app`` is. Under gunicorn.conf.py's hooks, the app, which the
    hooks start and stop. Without them (plain gunicorn, no gunicorn.conf.py in its working
    folder) this process is a worker gunicorn has forked, whose master is its parent: it
    shares that master's folder, starts its parts now and stops them, in the same order,
    when its main thread ends."""
    if installed:
        from suki_relay.serve.assemble import create_app

        return create_app(shared=shared)
    if preloading():
        raise RuntimeError(PRELOAD)
    folder = runtime.share(os.getppid()) if "gunicorn.workers.base" in sys.modules else None
    from suki_relay.serve.assemble import create_app  # after share(): it imports metrics

    app = create_app(shared=folder)
    app.process.start()
    app.process.stop_when_main_thread_ends()
    return app
