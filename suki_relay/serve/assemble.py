"""Building a relay process's WSGI app: load the config, make the store (and the spool)
and this process's background parts, mount the console. Nothing is started and nothing
is opened here: the process's lifecycle (process.py) does that, in the process that runs
the parts, after any fork.

``create_app()`` is what each gunicorn worker runs, so ``gunicorn 'suki_relay.wsgi:app'``
alone both receives and delivers, as ``suki-relay serve`` does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from suki_relay import logs, metrics
from suki_relay.serve.process import Process

if TYPE_CHECKING:
    from suki_relay.config.load import Config
    from suki_relay.deliver.deliverer import Deliverer
    from suki_relay.receive.app import RelayApp
    from suki_relay.serve.config_state import ConfigState
    from suki_relay.store import Store
    from suki_relay.store.spool import Spool

ENV_DELIVER = "SUKI_RELAY_DELIVER"  # "0": this process receives only (run `suki-relay worker`)


def create_app(config_path: str | None = None, deliver: bool = True,
               config: Config | None = None, state: ConfigState | None = None,
               shared: Path | None = None) -> RelayApp:
    """Set up logging, load the config and assemble the relay (under gunicorn, per worker;
    ``app.process`` is started by gunicorn's hooks, or by the wsgi module without them).

    ``shared``: the folder a gunicorn master's workers share (runtime.py); a config that
    fails to load there falls back to the last one that loaded."""
    logs.setup()
    if config is None:
        from suki_relay.serve.config_state import load_or_last_good

        config, state = load_or_last_good(config_path, shared)
    app = assemble(config, deliver, state)
    app.process.log = True
    return app


def assemble(config: Config, deliver: bool = True, state: ConfigState | None = None) -> RelayApp:
    """The store (and the spool), this process's delivery and drain (receive-only
    processes drain too), and the app over them; ``app.process`` starts and stops them.
    The store is lazy: a worker boots whatever it says (a database down, a file that
    cannot be opened), answers 503 while it cannot commit, and recovers by itself."""
    from suki_relay.deliver.deliverer import Deliverer
    from suki_relay.receive.app import RelayApp
    from suki_relay.serve.config_state import ConfigState
    from suki_relay.store import open_store
    from suki_relay.store.spool import open_spool

    metrics.configure(config.metrics.enabled)
    store = open_store(config.store_url, config.base_dir, lazy=True)
    spool = open_spool(config)
    deliver = deliver and os.environ.get(ENV_DELIVER, "1") != "0"
    deliverer = Deliverer(config, store) if deliver else None
    app = RelayApp(config, store, state or ConfigState(config.fingerprint), deliverer,
                   spool=spool)
    app.process = background(config, store, spool, deliverer)
    app.watcher, app.drainer = app.process.watcher, app.process.drainer
    app.process.rejections, app.process.app = app.rejections, app
    if config.console.enabled:
        from suki_relay.console.app import Console

        app.mount_console(Console(app))
    return app


def background(config: Config, store: Store, spool: Spool | None,
               deliverer: Deliverer | None) -> Process:
    """A process's parts (`serve`'s workers and `worker` alike), not started: delivery,
    the gap watcher where deliveries run, the spool's drain wherever there is a spool.
    Each is imported only when the config has it."""
    watcher = None
    if deliverer is not None and config.recovery_enabled:
        from suki_relay.recover.recovery import GapWatcher, Recoverer

        watcher = GapWatcher(config, store, Recoverer(config, store, deliverer=deliverer),
                             spool=spool)
    drainer = None
    if spool is not None:
        from suki_relay.receive.drain import Drainer

        drainer = Drainer(spool, store, deliverer.wake if deliverer else None)
    return Process(store, spool, deliverer, drainer, watcher, tracing=config.tracing)
