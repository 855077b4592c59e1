"""The relay's own sections of actions.yaml, declared as data (see config.py for how to add one).

Each is a frozen dataclass whose fields are declared with ``setting()``: the default, the
type, the range and any further check, in one place. config.SECTIONS lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from suki_relay.options import Unresolved, setting


def _path(value: str) -> str | None:
    return None if value.startswith("/") else "expected a path starting with /"


def _secrets(value: Any) -> str | None:
    items = [value] if isinstance(value, str) else value
    if items and all(isinstance(s, str) and (s or isinstance(s, Unresolved)) for s in items):
        return None
    return 'expected a list of non-empty secrets (e.g. ["${SUKI_WEBHOOK_SECRET}"])'


@dataclass(frozen=True)
class Receiver:
    path: str = setting("/webhooks/notification", check=_path, help="the webhook's path")
    secrets: tuple[str, ...] = setting((), kind=(list, str), required=True, secret=True,
                                       check=_secrets, help="the webhook secrets",
                                       convert=lambda v: (v,) if isinstance(v, str) else tuple(v))
    tolerance_seconds: float = setting(300.0, positive=True,
                                       help="refuse a generated-at further than this from now")
    max_body_bytes: int = setting(1024 * 1024, positive=True, help="a longer body is answered 413")
    read_timeout_seconds: float = setting(10.0, positive=True,
                                          help="the whole body must arrive within this, or 408")


@dataclass(frozen=True)
class DeliverySettings:
    threads: int = setting(8, positive=True, help="delivery threads per process")
    lease_seconds: float = setting(30.0, positive=True,
                                   help="a claimed delivery whose owner stops renewing is "
                                        "free again after this")
    poll_seconds: float = setting(1.0, positive=True,
                                  help="longest idle wait between looks at the store")
    shutdown_seconds: float = setting(20.0, positive=True,
                                      help="on SIGTERM, how long in-flight deliveries may finish")


@dataclass(frozen=True)
class Metrics:
    enabled: bool = setting(True, help="serve Prometheus metrics")
    path: str = setting("/metrics", check=_path, help="where they are served")


@dataclass(frozen=True)
class Retention:
    days: float | None = setting(None, kind=float, positive=True,
                                 help="finished events older than this are pruned")


@dataclass(frozen=True)
class RecoverySettings:
    """Gap detection (recovery.py). On by default when the suki: section is configured."""

    enabled: bool = setting(True, help="false turns gap detection off")
    grace_seconds: float = setting(300.0, positive=True,
                                   help="a listed session with no event this long after: check it")
    check_every_seconds: float = setting(600.0, positive=True,
                                         help="while Suki says it is unfinished, ask this often")
    give_up_after_hours: float = setting(24.0, positive=True,
                                         help="then stop asking, log an error, count a give-up")


@dataclass(frozen=True)
class SpoolSettings:
    """The local spool (spool.py): used only with a PostgreSQL store."""

    enabled: bool = setting(True, help="false: answer 503 while PostgreSQL cannot commit")
    path: str = setting("suki-relay-spool.db", help="the spool file, relative to actions.yaml")
    max_events: int = setting(100_000, positive=True, help="a full spool answers 503")


