"""`suki-relay serve`: gunicorn, with the relay's defaults and a safe reload.

The master validates actions.yaml at start and on every SIGHUP, by `check`'s rules; workers are built from
the last config that passed, so a broken edit is logged and never takes the relay down.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger

from suki_relay import logs
from suki_relay.config.check import checked_config
from suki_relay.config.load import config_path, parse_config
from suki_relay.errors import ConfigError, Problem
from suki_relay.serve import config_state, hooks

log = logging.getLogger("suki_relay.serve.gunicorn")

DEFAULTS: dict[str, Any] = {
    "bind": "127.0.0.1:8000",
    "workers": 2,
    "worker_class": "gthread",
    "threads": 16,
    "timeout": 30,
    "graceful_timeout": 30,
    "keepalive": 5,
}


class RelayLogger(GunicornLogger):  # type: ignore[misc]
    """Gunicorn's own lines (booting, signals, worker exits) in the relay's format."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(logs.formatter())


class RelayServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, config_file: str | None, options: dict[str, Any],
                 checked: str | None = None, warnings: list[Problem] | None = None):
        self.config_file = config_path(config_file)
        self.options = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
        self.checked = checked  # the version of a text already parsed (by the CLI): once
        self.warnings = warnings or []  # what `check` warned of in that text
        self.snapshot: str | None = None
        self.rejected: tuple[str, int] | None = None  # the edit that failed: version, problems
        super().__init__()

    def load_config(self) -> None:
        """Runs in the master, at start and on SIGHUP."""
        for key, value in self.options.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25.1
            self.cfg.set("control_socket_disable", True)
        self.cfg.set("logger_class", RelayLogger)
        for hook in ("post_fork", "post_worker_init", "worker_exit", "child_exit"):
            self.cfg.set(hook, getattr(hooks, hook))  # the process's lifecycle (process.py)
        text: str | None = None
        try:
            text = self.config_file.read_text(encoding="utf-8")
            if self.checked != config_state.version(text):
                _, self.warnings = checked_config(text, self.config_file)
            self.checked = None
        except (OSError, ConfigError) as exc:
            if self.snapshot is None:
                raise
            problems = getattr(exc, "problems", [exc])
            self.rejected = (config_state.version(text) if text is not None else "unreadable",
                             len(problems))
            config_state.log_rejected(problems, self.rejected[0])
            return
        if self.snapshot is not None and text != self.snapshot:
            logs.event(log, "config reloaded", file=str(self.config_file),
                       version=config_state.version(text))
        if self.snapshot is None or text != self.snapshot:
            config_state.log_warnings(self.warnings, config_state.version(text))
        self.warnings = []
        self.snapshot = text
        self.rejected = None

    def load(self) -> Any:
        """Runs in each worker: the app from the last config that passed (its parts are
        started by the post_worker_init hook, stopped by worker_exit)."""
        from suki_relay.serve.assemble import create_app

        assert self.snapshot is not None
        rejected, problems = self.rejected or (None, 0)
        config = parse_config(self.snapshot, self.config_file)
        state = config_state.ConfigState(config.fingerprint, rejected, problems)
        return create_app(config=config, state=state)


def serve(config_file: str | None, options: dict[str, Any], checked: str | None = None,
          warnings: list[Problem] | None = None) -> None:
    """``checked``: the version of the config text the caller has just parsed and checked
    (``warnings``: what the check warned of), so the master does not parse the same text
    again at start (it does on every reload)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="suki-relay-metrics-")
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
    logs.setup()
    RelayServer(config_file, options, checked, warnings).run()
