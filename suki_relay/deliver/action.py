"""The contract every action type follows, built-in or third-party.

An action type is a subclass of :class:`Action` registered under the entry point group
``suki_relay.actions``; the entry point's name is the ``type:`` used in actions.yaml.
It declares its options as data (:class:`Option`); the core validates them when the
config loads, compiles their strings as Jinja templates, and hands ``deliver`` one
:class:`Delivery` at a time, outside any request, with retries decided by what it raises:

* return normally (optionally a short note) - done;
* raise :class:`~suki_relay.errors.RetryableError` - tried again later, with backoff;
* raise :class:`~suki_relay.errors.PermanentError` - failed, kept for replay.

Any other exception counts as retryable and is logged by class name only. ``self.http``
is a requests session for outbound calls (made by suki_relay.deliver.outbound: ~/.netrc is never
read); ``outbound.send(self.http, ..., delivery=delivery)`` records the target's HTTP
status on the delivery, and `suki-relay show` lists it with the attempt. Suki's settings
reach an action only as ``self.relay.suki``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from suki_relay.deliver import outbound
from suki_relay.deliver.templates import Template, Templates, render_value
from suki_relay.errors import PermanentError
from suki_relay.options import Option

if TYPE_CHECKING:
    import requests

    from suki_relay.deliver.suki_api import SukiClient, SukiSettings

MASK = "***"
_SECRET_KEY = re.compile(r"authorization|token|secret|password|api[-_]?key", re.IGNORECASE)


@dataclass
class Delivery:
    """One (event, action) pair being attempted."""

    id: str
    event_id: str
    action: str
    attempt: int
    event: Any
    raw_body: bytes
    received_at: str
    http_status: int | None = None  # the target's answer; outbound.send(..., delivery=) sets it
    # the documents fetched for this attempt (the action's ``fetch:``), by link relation:
    # protected health information, never stored or logged, fetched again each attempt
    fetched: dict[str, Any] = field(default_factory=dict)
    recovered: bool = False  # the event was recovered from Suki's status API
    # the previous attempt's process died mid-attempt (its lease ran out), or stopped and
    # handed the delivery back while the attempt was under way: whether it acted is
    # unknown, so an action that must not act twice checks before acting again
    taken_over: bool = False
    failed: dict[str, Any] | None = None  # on_failure: action, error, attempts, delivery_id

    def context(self, **extra: Any) -> dict[str, Any]:
        """What templates see: event, event_id, received_at, delivery_id, attempt, fetched,
        recovered; and `failed` in an on_failure delivery."""
        context = {
            "event": self.event,
            "event_id": self.event_id,
            "received_at": self.received_at,
            "delivery_id": self.id,
            "attempt": self.attempt,
            "fetched": self.fetched,
            "recovered": self.recovered,
            **extra,
        }
        if self.failed is not None:
            context.setdefault("failed", self.failed)
        return context


@dataclass
class RelayContext:
    """What the core gives an action when it is built."""

    templates: Templates
    base_dir: Path  # the folder of actions.yaml: relative paths are relative to it
    suki: SukiSettings | None = None  # the top-level `suki:` section, if the config has one
    _suki_client: SukiClient | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def suki_client(self) -> SukiClient:
        """The one Suki client of this config in this process: every action that fetches
        shares its login and token cache."""
        with self._lock:
            if self._suki_client is None:
                from suki_relay.deliver.suki_api import SukiClient

                if self.suki is None:
                    raise PermanentError("fetching from Suki needs the top-level `suki:` section")
                self._suki_client = SukiClient(self.suki)
            return self._suki_client


class Action:
    """Base class of every action type. Subclasses declare ``options`` and ``deliver``."""

    options: ClassVar[dict[str, Option]] = {}
    description: ClassVar[str] = ""
    # the action's max_concurrency (set by the config loader before check()): at most this
    # many deliveries at once across all processes, so no process needs more connections
    max_concurrency: int = 4

    def __init__(self, name: str, values: dict[str, Any], relay: RelayContext):
        self.name = name
        self.values = values  # validated; strings compiled to templates where declared
        self.relay = relay
        self._sessions = outbound.Sessions()

    @property
    def http(self) -> requests.Session:
        """This thread's session for outbound HTTP (connections are reused; made by
        outbound.new_session, so ~/.netrc is never read)."""
        return self._sessions.get()

    def check(self) -> list[str]:
        """Further validation across options; return messages, empty if all is well."""
        return []

    def fetches(self) -> tuple[str, ...]:
        """Link relations this action always needs fetched (see suki_relay.deliver.fetch), besides
        those the user lists under ``fetch:``; they arrive in ``delivery.fetched``."""
        return ()

    def public_keys(self) -> list[dict[str, Any]]:
        """Public JWKs of the keys this action signs with (SMART Backend Services): the
        relay publishes them at ``/.well-known/jwks.json``. Never a private key."""
        return []

    def close(self) -> None:
        """Release what the action holds across deliveries (a connection pool): called
        when the process stops delivering with this config. Delivering again after it may
        open them anew."""

    def render(self, option: str, delivery: Delivery, **extra: Any) -> Any:
        """The option's value rendered for this delivery."""
        return render_value(self.values.get(option), delivery.context(**extra))

    def deliver(self, delivery: Delivery) -> str | None:
        raise NotImplementedError

    def preview(self, delivery: Delivery) -> dict[str, Any]:
        """What deliver() would send, rendered, secrets masked: for dry runs."""
        shown: dict[str, Any] = {}
        for key, opt in self.options.items():
            value = self.values.get(key)
            if value is None:
                continue
            if opt.secret:
                shown[key] = MASK
            else:
                shown[key] = mask_secret_keys(self.render(key, delivery))
        return shown


def mask_secret_keys(value: Any) -> Any:
    """Mask values under keys that look like credentials (headers, nested options)."""
    if isinstance(value, dict):
        return {
            k: MASK if isinstance(k, str) and _SECRET_KEY.search(k) else mask_secret_keys(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_secret_keys(v) for v in value]
    return value


__all__ = [
    "Action",
    "Delivery",
    "Option",
    "RelayContext",
    "Template",
    "mask_secret_keys",
]
