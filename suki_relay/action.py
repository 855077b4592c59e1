"""The contract every action type follows, built-in or third-party.

An action type is a subclass of :class:`Action` registered under the entry point group
``suki_relay.actions``; the entry point's name is the ``type:`` used in actions.yaml.
It declares its options as data (:class:`Option`); the core validates them when the
config loads, compiles their strings as Jinja templates, and hands ``deliver`` one
:class:`Delivery` at a time, outside any request, with retries decided by what it raises:

* return normally (optionally a short note) - done;
* raise :class:`~suki_relay.errors.RetryableError` - tried again later, with backoff;
* raise :class:`~suki_relay.errors.PermanentError` - failed, kept for replay.

Any other exception counts as retryable and is logged by class name only.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import PermanentError
from .templates import Template, Templates, render_value

if TYPE_CHECKING:
    from .suki_api import SukiClient, SukiSettings

MASK = "***"
_SECRET_KEY = re.compile(r"authorization|token|secret|password|api[-_]?key", re.IGNORECASE)


@dataclass(frozen=True)
class Option:
    """One option of an action type, declared as data."""

    kind: type | tuple[type, ...] = str
    required: bool = False
    default: Any = None
    secret: bool = False  # masked wherever the relay prints it
    template: bool = True  # strings inside are Jinja templates rendered per delivery
    html: bool = False  # templates autoescape HTML
    choices: tuple[Any, ...] = ()
    help: str = ""


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
    # the documents fetched for this attempt (the action's ``fetch:``), by link relation:
    # protected health information, never stored or logged, fetched again each attempt
    fetched: dict[str, Any] = field(default_factory=dict)
    recovered: bool = False  # the event was recovered from Suki's status API
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
    suki: SukiSettings | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _suki_client: SukiClient | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def suki_client(self) -> SukiClient:
        """The one Suki client of this config in this process: every action that fetches
        shares its login and token cache."""
        with self._lock:
            if self._suki_client is None:
                from .suki_api import SukiClient

                if self.suki is None:
                    raise PermanentError("fetching from Suki needs the top-level `suki:` section")
                self._suki_client = SukiClient(self.suki)
            return self._suki_client


class Action:
    """Base class of every action type. Subclasses declare ``options`` and ``deliver``."""

    options: ClassVar[dict[str, Option]] = {}
    description: ClassVar[str] = ""

    def __init__(self, name: str, values: dict[str, Any], relay: RelayContext):
        self.name = name
        self.values = values  # validated; strings compiled to templates where declared
        self.relay = relay

    def check(self) -> list[str]:
        """Further validation across options; return messages, empty if all is well."""
        return []

    def fetches(self) -> tuple[str, ...]:
        """Link relations this action always needs fetched (see suki_relay.fetch), besides
        those the user lists under ``fetch:``; they arrive in ``delivery.fetched``."""
        return ()

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


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a mapping"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def validate_options(
    cls: type[Action], raw: dict[str, Any], templates: Templates
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Check ``raw`` against ``cls.options``; returns (values, [(option, message)])."""
    problems: list[tuple[str, str]] = []
    values: dict[str, Any] = {}
    for key in raw:
        if key not in cls.options:
            known = ", ".join(sorted(cls.options)) or "none"
            problems.append((key, f"unknown option; expected one of: {known}"))
    for key, opt in cls.options.items():
        if key not in raw or raw[key] is None:
            if opt.required:
                problems.append((key, f"required option missing ({opt.help or _kind_name(opt.kind)})"))
            default = opt.default
            values[key] = templates.compile_value(default, opt.html) if opt.template else default
            continue
        value = raw[key]
        kinds = opt.kind if isinstance(opt.kind, tuple) else (opt.kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            problems.append((key, f"expected {_kind_name(opt.kind)}, got {type(value).__name__}"))
            continue
        if opt.choices and value not in opt.choices:
            problems.append((key, f"expected one of {list(opt.choices)}, got {value!r}"))
            continue
        if opt.template:
            try:
                value = templates.compile_value(value, html=opt.html)
            except Exception as exc:  # jinja2.TemplateSyntaxError and friends
                problems.append((key, f"template error: {exc}"))
                continue
        values[key] = value
    return values, problems


__all__ = [
    "Action",
    "Delivery",
    "Option",
    "RelayContext",
    "Template",
    "mask_secret_keys",
    "validate_options",
]
