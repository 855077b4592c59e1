"""Building a relay process's WSGI app: load the config, open the store (and the spool),
start this process's background parts, mount the console.

``create_app()`` is what each gunicorn worker runs, so ``gunicorn 'suki_relay.wsgi:app'``
alone both receives and delivers, as ``suki-relay serve`` does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from suki_relay import logs
from suki_relay.receive.app import RelayApp
from suki_relay.serve.config_state import ConfigState, load_or_last_good

if TYPE_CHECKING:
    from suki_relay.config.load import Config
    from suki_relay.deliver.deliverer import Deliverer
    from suki_relay.receive.drain import Drainer
    from suki_relay.recover.recovery import GapWatcher
    from suki_relay.store import Store
    from suki_relay.store.spool import Spool

ENV_DELIVER = "SUKI_RELAY_DELIVER"  # "0": this process receives only (run `suki-relay worker`)


def create_app(config_path: str | None = None, deliver: bool = True,
               config: Config | None = None, state: ConfigState | None = None,
               shared: Path | None = None) -> RelayApp:
    """Set up logging, load the config and assemble the relay (under gunicorn, per worker).

    ``shared``: the folder a gunicorn master's workers share (runtime.py); a config that
    fails to load there falls back to the last one that loaded."""
    logs.setup()
    if config is None:
        config, state = load_or_last_good(config_path, shared)
    return assemble(config, deliver, state)


def assemble(config: Config, deliver: bool = True, state: ConfigState | None = None) -> RelayApp:
    """Open the store (and the spool), start this process's delivery threads and its drain
    thread (receive-only processes drain too), and build the app over them."""
    from suki_relay import tracing
    from suki_relay.deliver.deliverer import Deliverer
    from suki_relay.store import open_store
    from suki_relay.store.spool import open_spool

    tracing.setup(config.tracing)  # per process: in each gunicorn worker, after the fork
    store = open_store(config.store_url, config.base_dir, lazy=True)
    spool = open_spool(config)
    deliver = deliver and os.environ.get(ENV_DELIVER, "1") != "0"
    deliverer = Deliverer(config, store) if deliver else None
    if deliverer is not None:
        deliverer.start()
    watcher, drainer = start_background(config, store, spool, deliverer)
    app = RelayApp(config, store, state or ConfigState(config.fingerprint), deliverer, watcher,
                   spool, drainer)
    if config.console.enabled:
        from suki_relay.console.app import Console

        app.mount_console(Console(app))
    return app


def start_background(config: Config, store: Store, spool: Spool | None,
                     deliverer: Deliverer | None) -> tuple[GapWatcher | None, Drainer | None]:
    """A process's threads besides delivery (`serve`'s workers and `worker` alike): the
    gap watcher where deliveries run, the spool's drain wherever there is a spool."""
    from suki_relay.receive.drain import Drainer
    from suki_relay.recover.recovery import GapWatcher, Recoverer

    watcher = None
    if deliverer is not None and config.recovery_enabled:
        watcher = GapWatcher(config, store, Recoverer(config, store, deliverer=deliverer),
                             spool=spool)
        watcher.start()
    drainer = None
    if spool is not None:
        drainer = Drainer(spool, store, deliverer.wake if deliverer else None).start()
    return watcher, drainer
