"""Which config a process runs, and whether the last edit of actions.yaml was rejected.

A reload with a broken actions.yaml must never stop the relay: it keeps serving on the
last config that loaded, logs each problem at ERROR, and says so in /readyz's body and in
the ``suki_relay_config_reload_rejected`` metric until a good config is loaded.
``suki-relay serve`` validates in its master; under plain gunicorn each new worker finds
the last good config in the folder its master's workers share (runtime.py). What
`check` calls an error refuses a config as a broken file does; its warnings are logged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from suki_relay import logs
from suki_relay.config.check import checked_config
from suki_relay.config.load import Config, config_path, fingerprint, parse_config, read_config
from suki_relay.errors import ConfigError, Problem
from suki_relay.serve.runtime import first_to_claim, unclaim, write_private

log = logging.getLogger("suki_relay.config.load")
LAST_GOOD = "config.yaml"


version = fingerprint  # a config's version: the start of the SHA-256 of its text


@dataclass(frozen=True)
class ConfigState:
    version: str  # of the config running
    rejected: str | None = None  # version of the file as edited, when it failed to load
    problems: int = 0  # how many problems it had

    def describe(self) -> dict[str, object]:
        """For /readyz's body: nothing while the file's config runs; else which config
        runs, which edit was rejected and how many problems it has."""
        if self.rejected is None:
            return {}
        return {"config": self.version, "config_rejected": self.rejected,
                "config_problems": self.problems}


def log_rejected(problems: list[Problem] | list[Exception], rejected: str) -> None:
    for p in problems:
        logs.event(log, "config rejected; still running the previous one", logging.ERROR,
                   problem=str(p), rejected_version=rejected)


def log_warnings(problems: list[Problem], version: str) -> None:
    """What `check` calls a warning, at WARNING, when a config starts or is reloaded."""
    for p in problems:
        logs.event(log, "config warning", logging.WARNING, problem=str(p), version=version)


def load_or_last_good(path: str | os.PathLike[str] | None,
                      shared: Path | None) -> tuple[Config, ConfigState]:
    """The config in the file, remembered in ``shared`` as the last good one; if the file
    does not load and a last good one is there, that one (and the problems, logged once
    for all the workers sharing the folder). Without a last good config (the first start),
    the problems are raised as ever."""
    file = config_path(path)
    text: str | None = None
    try:
        text, file = read_config(file)
        config, warnings = checked_config(text, file)
    except ConfigError as exc:
        last = shared / LAST_GOOD if shared is not None else None
        if last is None or not last.exists():
            raise
        rejected = version(text) if text is not None else "unreadable"
        if first_to_claim(shared / f"rejected-{rejected}"):  # type: ignore[operator]
            log_rejected(exc.problems, rejected)
        config = parse_config(last.read_text(encoding="utf-8"), file)
        return config, ConfigState(config.fingerprint, rejected, len(exc.problems))
    current = config.fingerprint
    if warnings and (shared is None or first_to_claim(shared / f"warned-{current}")):
        log_warnings(warnings, current)
    if shared is not None:
        last = shared / LAST_GOOD
        before = version(last.read_text(encoding="utf-8")) if last.exists() else None
        if before not in (None, current) and first_to_claim(shared / f"loaded-{current}"):
            logs.event(log, "config reloaded", file=str(file), version=current)
        write_private(last, text)
        unclaim(shared, "rejected-*")
    return config, ConfigState(current)
