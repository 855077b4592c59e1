"""One relay process's background parts, started and stopped by one object in a known order.

Besides answering requests, a relay process (a gunicorn worker, `suki-relay worker`) runs:

    1. the log writer           logs.py: first up, last down (every other part logs)
       and tracing              tracing.py: its batch exporter's thread, if configured
    2. the deadline watchdog    watchdog.py (request bodies and outbound exchanges)
    3. the deliverer            deliver/deliverer.py (unless the process receives only)
    4. the spool's drain        receive/drain.py (with a spool)
    5. the gap watcher          recover/recovery.py (where deliveries run)
    6. the rejection writer     receive/rejections.py (where requests are received)

``start()`` starts them in that order and then asks readiness once, so a store or spool
that cannot commit is logged at boot. ``stop()`` stops them in the reverse order: the
refusals tallied are written, recovery and the drain end, in-flight deliveries get
``shutdown_seconds`` and the leases of the rest are given back, the watchdog ends, the
store and the spool are closed, the log is written out. Building the parts (assemble.py)
starts nothing and opens nothing, so a gunicorn master that builds the app before forking
(``--preload``) leaves its workers nothing to undo. Nothing here starts by itself: no fork
hooks, no exit hooks, no process-id comparisons.

Who calls it:

* gunicorn's hooks (hooks.py): ``post_fork`` (the log writer afresh: the master's queued
  lines are the master's), ``post_worker_init`` (start), ``worker_exit`` (stop). `suki-relay
  serve` sets them itself; plain gunicorn reads them from the ``gunicorn.conf.py`` that
  ``suki-relay init`` writes (gunicorn reads that file from its working folder by itself).
* plain gunicorn without that file: ``suki_relay.wsgi`` starts the process when gunicorn
  imports it (in each worker) and stops it when the worker's main thread ends.
* `suki-relay worker`: start, wait for SIGTERM or SIGINT, stop. Tests: start, stop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from suki_relay import logs, tracing
from suki_relay.watchdog import watchdog

if TYPE_CHECKING:
    from suki_relay.deliver.deliverer import Deliverer
    from suki_relay.receive.app import RelayApp
    from suki_relay.receive.drain import Drainer
    from suki_relay.receive.rejections import RejectionLog
    from suki_relay.recover.recovery import GapWatcher
    from suki_relay.store import Store
    from suki_relay.store.spool import Spool
    from suki_relay.tracing import TracingSettings

JOIN_SECONDS = 10.0  # at stop: how long to wait for the drain's and the deliverer's threads


@dataclass(eq=False)
class Process:
    store: Store
    spool: Spool | None = None
    deliverer: Deliverer | None = None
    drainer: Drainer | None = None
    watcher: GapWatcher | None = None
    rejections: RejectionLog | None = None
    app: RelayApp | None = None  # the receiving app, whose readiness is asked at start
    tracing: TracingSettings | None = None
    log: bool = False  # the log writer is this process's (a relay process; not a test's)
    started: bool = False
    stopped: bool = False

    def start(self) -> None:
        """Start every part, in order (once; a stopped process does not start again)."""
        if self.started:
            return
        self.started = True
        if self.log and not logs.running():
            logs.setup()
        if self.tracing is not None:
            tracing.setup(self.tracing)
        watchdog.start()
        if self.deliverer is not None:
            self.deliverer.start()
        if self.drainer is not None:
            self.drainer.start()
        if self.watcher is not None:
            self.watcher.start()
        if self.rejections is not None:
            self.rejections.start()
        if self.app is not None:
            self.app.readiness()  # a store or spool unavailable at boot is logged now

    def stop(self, timeout: float | None = None) -> None:
        """Stop every part, in the reverse order (once; nothing if never started).
        ``timeout``: how long in-flight deliveries get (default: shutdown_seconds)."""
        if not self.started or self.stopped:
            return
        self.stopped = True
        if self.rejections is not None:
            self.rejections.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.drainer is not None:
            self.drainer.stop()
            self.drainer.join(JOIN_SECONDS)
        if self.deliverer is not None:
            self.deliverer.stop(timeout)
            self.deliverer.join(JOIN_SECONDS)
        watchdog.stop()
        self.store.close()
        if self.spool is not None:
            self.spool.close()
        if self.tracing is not None:
            tracing.shutdown()  # the spans still queued are sent
        if self.log:
            logs.flush()

    def stop_when_main_thread_ends(self) -> None:
        """Stop when the process's main thread ends (gunicorn's worker returns from its
        run loop and exits): for plain gunicorn without gunicorn.conf.py, where no hook
        tells the process it is ending. The thread that waits is not a daemon, so the
        interpreter waits for the stop before it exits."""
        def wait() -> None:
            threading.main_thread().join()
            self.stop()

        threading.Thread(target=wait, name="suki-stop-at-exit", daemon=False).start()
