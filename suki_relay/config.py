"""The one config loader: actions.yaml in, a validated Config out, or every Problem found.

Loading substitutes ``${VAR}``, ``${VAR:-default}`` and ``${file:/path}`` (``$${`` is a
literal ``${``), builds every action through the plugin registry, compiles every template
and every rule. Each problem names the file, the line, the action or rule, and what was
expected, so `suki-relay check` can print them all at once.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import plugins
from .action import Action, RelayContext, validate_options
from .console.settings import ConsoleSettings
from .console.settings import check as check_console
from .errors import ConfigError, Problem
from .fetch import RELATIONS, unknown_relations
from .routing import Rule, compile_condition, required_statuses
from .suki_api import SukiSettings
from .templates import Templates

ENV_CONFIG = "SUKI_RELAY_CONFIG"
DEFAULT_FILE = "actions.yaml"
TOP_LEVEL = ("receiver", "store", "templates", "actions", "rules", "unmatched", "delivery",
             "suki", "metrics", "retention", "recovery", "on_failure", "console", "spool")
CORE_ACTION_KEYS = ("type", "max_concurrency", "retry", "fetch")
_VAR = re.compile(r"\$(\$?)\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ---------------------------------------------------------------- YAML with line numbers


class _Map(dict):  # type: ignore[type-arg]
    """A mapping that remembers the line of itself and of each key."""

    line: int = 0
    lines: dict[Any, int]


class _Loader(yaml.SafeLoader):
    duplicates: list[tuple[str, int]]


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.line = node.start_mark.line + 1
    result.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            loader.duplicates.append((str(key), key_node.start_mark.line + 1))
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = key_node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line(mapping: Any, key: Any = None) -> int | None:
    if isinstance(mapping, _Map):
        return mapping.lines.get(key, mapping.line) if key is not None else mapping.line
    return None


# ---------------------------------------------------------------- the Config


@dataclass(frozen=True)
class Receiver:
    path: str = "/webhooks/notification"
    secrets: tuple[str, ...] = ()
    tolerance_seconds: float = 300.0
    max_body_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; defaults retry for about a day."""

    max_attempts: int = 20
    initial_seconds: float = 5.0
    max_seconds: float = 3 * 3600.0
    max_age_seconds: float = 24 * 3600.0

    def delay(self, tries: int, retry_after: float | None = None) -> float:
        """Seconds before the next try, after ``tries`` failed ones (1-based)."""
        base = min(self.max_seconds, self.initial_seconds * 2 ** (tries - 1))
        delay = base * random.uniform(0.75, 1.25)
        if retry_after is not None:  # the target knows best, within the retry window
            delay = max(delay, min(retry_after, self.max_age_seconds))
        return delay


@dataclass(frozen=True)
class DeliverySettings:
    threads: int = 8  # delivery threads per process
    lease_seconds: float = 30.0  # a claimed delivery whose owner stops renewing is free again after this
    poll_seconds: float = 1.0  # longest idle wait between looks at the store
    shutdown_seconds: float = 20.0  # on SIGTERM, how long in-flight deliveries may finish


@dataclass(frozen=True)
class RecoverySettings:
    """Gap detection (recovery.py). On by default when the suki: section is configured."""

    enabled: bool = True
    grace_seconds: float = 300.0  # a listed session with no event this long after: check it
    check_every_seconds: float = 600.0  # while Suki says it is unfinished, ask again this often
    give_up_after_hours: float = 24.0  # then stop asking, log an error, count a give-up


@dataclass(frozen=True)
class ActionSpec:
    name: str
    type: str
    action: Action
    max_concurrency: int = 4
    retry: RetryPolicy = RetryPolicy()
    fetch: tuple[str, ...] = ()  # link relations fetched before each attempt (suki_relay.fetch)


@dataclass(frozen=True)
class Metrics:
    enabled: bool = True
    path: str = "/metrics"


@dataclass(frozen=True)
class SpoolSettings:
    """The local spool (spool.py): used only with a PostgreSQL store."""

    enabled: bool = True
    path: str = "suki-relay-spool.db"  # relative to actions.yaml
    max_events: int = 100_000


@dataclass
class Config:
    file: Path
    base_dir: Path
    receiver: Receiver
    store_url: str
    templates: Templates
    actions: dict[str, ActionSpec]
    rules: list[Rule]
    unmatched: list[str]
    delivery: DeliverySettings = DeliverySettings()
    metrics: Metrics = Metrics()
    retention_days: float | None = None
    suki: SukiSettings | None = None
    recovery: RecoverySettings = RecoverySettings()
    on_failure: list[str] = field(default_factory=list)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    spool: SpoolSettings = SpoolSettings()
    text: str = field(default="", repr=False)

    @property
    def recovery_enabled(self) -> bool:
        return self.suki is not None and self.recovery.enabled


# ---------------------------------------------------------------- loading


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get(ENV_CONFIG) or DEFAULT_FILE)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem("config", f"cannot read: {exc.strerror}", file=str(file))]) from None
    return parse_config(text, file)


def parse_config(text: str, file: Path) -> Config:
    return _Builder(file).build(text)


class _Builder:
    def __init__(self, file: Path):
        self.file = file
        self.base_dir = file.resolve().parent
        self.problems: list[Problem] = []

    def problem(self, where: str, message: str, line: int | None = None) -> None:
        self.problems.append(Problem(where, message, line, str(self.file)))

    # ${...} substitution, recording problems at the line of the string
    def substitute(self, value: Any, where: str, line: int | None) -> Any:
        if isinstance(value, str):
            return _VAR.sub(lambda m: self._var(m, where, line), value)
        if isinstance(value, _Map):
            out = _Map({k: self.substitute(v, f"{where}.{k}" if where else str(k), _line(value, k))
                        for k, v in value.items()})
            out.line, out.lines = value.line, value.lines
            return out
        if isinstance(value, list):
            return [self.substitute(v, f"{where}[{i}]", line) for i, v in enumerate(value)]
        return value

    def _var(self, m: re.Match[str], where: str, line: int | None) -> str:
        if m.group(1):
            return "${" + m.group(2) + "}"
        expr = m.group(2)
        if expr.startswith("file:"):
            path = Path(expr[5:])
            try:
                return path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                self.problem(where, f"secret file {path} cannot be read: {exc.strerror}", line)
                return ""
        name, sep, default = expr.partition(":-")
        if not _NAME.fullmatch(name):
            self.problem(where, f"${{{expr}}}: expected ${{NAME}}, ${{NAME:-default}} or "
                                "${file:/path}", line)
            return ""
        if name in os.environ:
            return os.environ[name]
        if sep:
            return default
        self.problem(where, f"environment variable {name} is not set", line)
        return ""

    def build(self, text: str) -> Config:
        loader = _Loader(text)
        loader.duplicates = []
        try:
            raw = loader.get_single_data()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            self.problem("yaml", str(getattr(exc, "problem", exc)),
                         mark.line + 1 if mark else None)
            raise ConfigError(self.problems) from None
        finally:
            loader.dispose()
        for key, line in loader.duplicates:
            self.problem(key, "key appears twice; the second would silently win", line)
        if raw is None:
            raw = _Map()
        if not isinstance(raw, dict):
            self.problem("config", "expected a mapping at the top level", 1)
            raise ConfigError(self.problems)
        for key in raw:
            if key not in TOP_LEVEL:
                self.problem(str(key), f"unknown key; expected one of: {', '.join(TOP_LEVEL)}",
                             _line(raw, key))
        raw = self.substitute(raw, "", None)

        receiver = self.receiver(raw.get("receiver"), _line(raw, "receiver"))
        templates_dir = self.templates_dir(raw.get("templates"), _line(raw, "templates"))
        templates = Templates(templates_dir)
        suki = self.suki(raw.get("suki"), _line(raw, "suki"))
        relay = RelayContext(templates=templates, base_dir=self.base_dir, suki=suki)
        actions = self.actions(raw.get("actions"), relay, _line(raw, "actions"))
        rules = self.rules(raw.get("rules"), actions, _line(raw, "rules"))
        unmatched = self.action_list(raw.get("unmatched") or [], "unmatched", actions,
                                     _line(raw, "unmatched"))
        delivery = self.section(raw.get("delivery"), "delivery", DeliverySettings, raw)
        metrics = self.section(raw.get("metrics"), "metrics", Metrics, raw)
        retention = self.retention(raw.get("retention"), _line(raw, "retention"))
        spool = self.section(raw.get("spool"), "spool", SpoolSettings, raw)
        recovery = self.section(raw.get("recovery"), "recovery", RecoverySettings, raw)
        if raw.get("recovery") is not None and recovery.enabled and suki is None and \
                not any(p.where.startswith("suki") for p in self.problems):
            self.problem("recovery", "needs the top-level `suki:` section (Suki's status API "
                         "is how missing sessions are checked); or set enabled: false",
                         _line(raw, "recovery"))
        on_failure = self.action_list(raw.get("on_failure") or [], "on_failure", actions,
                                      _line(raw, "on_failure"))
        console, console_problems = check_console(raw.get("console"))
        for where, message in console_problems:
            self.problem(where, message, _line(raw.get("console"), where.split(".")[1])
                         if "." in where else _line(raw, "console"))
        if console.enabled and console.path in (receiver.path, metrics.path):
            self.problem("console.path", "already the webhook or metrics path",
                         _line(raw, "console"))
        store_url = raw.get("store") or "sqlite:///suki-relay.db"
        if not isinstance(store_url, str) or not store_url.startswith(("sqlite:", "postgresql:",
                                                                       "postgres:")):
            self.problem("store", "expected sqlite:///path or postgresql://...",
                         _line(raw, "store"))
        if self.problems:
            raise ConfigError(self.problems)
        return Config(
            file=self.file, base_dir=self.base_dir, receiver=receiver, store_url=store_url,
            templates=templates, actions=actions, rules=rules, unmatched=unmatched,
            delivery=delivery, metrics=metrics, retention_days=retention, suki=suki,
            recovery=recovery, on_failure=on_failure, console=console, spool=spool,
            text=text,
        )

    def section(self, raw: Any, name: str, cls: type, parent: Any) -> Any:
        """A flat section of numbers/bools/strings mapped onto a frozen dataclass."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            self.problem(name, "expected a mapping", _line(parent, name))
            return cls()
        defaults = cls()
        values = {}
        for key, value in raw.items():
            if not hasattr(defaults, key):
                fields = ", ".join(cls.__dataclass_fields__)
                self.problem(f"{name}.{key}", f"unknown option; expected one of: {fields}",
                             _line(raw, key))
                continue
            want = type(getattr(defaults, key))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or isinstance(value, bool) != (want is bool):
                self.problem(f"{name}.{key}", f"expected {want.__name__}, got {value!r}",
                             _line(raw, key))
                continue
            if want in (int, float) and value <= 0:
                self.problem(f"{name}.{key}", "expected a positive number", _line(raw, key))
                continue
            values[key] = value
        return cls(**values)

    def receiver(self, raw: Any, line: int | None) -> Receiver:
        if raw is None:
            raw = _Map()
        if not isinstance(raw, dict):
            self.problem("receiver", "expected a mapping", line)
            return Receiver()
        secrets = raw.get("secrets", raw.get("secret"))
        if "secrets" in raw and "secret" in raw:
            self.problem("receiver.secret", "give either secret or secrets, not both",
                         _line(raw, "secret"))
        if isinstance(secrets, str):
            secrets = [secrets]
        already = any(p.where.startswith("receiver.secret") for p in self.problems)
        if not already and (not secrets or not isinstance(secrets, list) or not all(
                isinstance(s, str) and s for s in secrets)):
            self.problem("receiver.secrets", "expected a list of non-empty secrets (e.g. "
                         '["${SUKI_WEBHOOK_SECRET}"])', _line(raw, "secrets") or line)
            secrets = []
        rest = _Map({k: v for k, v in raw.items() if k not in ("secret", "secrets")})
        rest.line, rest.lines = _line(raw) or 0, getattr(raw, "lines", {})
        fields = self.section(rest, "receiver", Receiver, {"receiver": rest})
        if not str(fields.path).startswith("/"):
            self.problem("receiver.path", "expected a path starting with /", _line(raw, "path"))
        return Receiver(fields.path, tuple(secrets), fields.tolerance_seconds,
                        fields.max_body_bytes)

    def templates_dir(self, raw: Any, line: int | None) -> Path | None:
        if raw is None:
            default = self.base_dir / "templates"
            return default if default.is_dir() else None
        folder = self.base_dir / str(raw)
        if not folder.is_dir():
            self.problem("templates", f"folder {folder} does not exist", line)
            return None
        return folder

    def suki(self, raw: Any, line: int | None) -> SukiSettings | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            self.problem("suki", "expected a mapping with base_url, partner_id, partner_token",
                         line)
            return None
        known = SukiSettings.__dataclass_fields__
        for key in raw:
            if key not in known:
                self.problem(f"suki.{key}", f"unknown option; expected one of: {', '.join(known)}",
                             _line(raw, key))
        missing = [k for k in ("base_url", "partner_id", "partner_token") if not raw.get(k)]
        for key in missing:
            self.problem(f"suki.{key}", "required", line)
        base = str(raw.get("base_url", ""))
        if base and not re.match(r"https?://[^/]+", base):
            self.problem("suki.base_url", "expected an http(s):// URL", _line(raw, "base_url"))
        if missing:
            return None
        return SukiSettings(
            base_url=base, partner_id=str(raw["partner_id"]),
            partner_token=str(raw["partner_token"]),
            provider_id=str(raw["provider_id"]) if raw.get("provider_id") else None,
            timeout_seconds=float(raw.get("timeout_seconds", 20.0)),
        )

    def actions(self, raw: Any, relay: RelayContext, line: int | None) -> dict[str, ActionSpec]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem("actions", "expected a mapping of action name to options", line)
            return {}
        types = plugins.discover()
        out: dict[str, ActionSpec] = {}
        for name, options in raw.items():
            where = f"actions.{name}"
            aline = _line(raw, name)
            if not isinstance(options, dict):
                self.problem(where, "expected a mapping with at least `type:`", aline)
                continue
            type_name = options.get("type")
            found = types.get(str(type_name)) if type_name else None
            if found is None:
                known = ", ".join(sorted(t for t, v in types.items() if v.cls)) or "none"
                self.problem(f"{where}.type", f"unknown action type {type_name!r}; installed: "
                             f"{known}", _line(options, "type"))
                continue
            if found.cls is None:
                self.problem(f"{where}.type", f"plugin {type_name!r} from {found.package} cannot "
                             f"be loaded: {found.error}", _line(options, "type"))
                continue
            plugin_raw = {k: v for k, v in options.items() if k not in CORE_ACTION_KEYS}
            values, problems = validate_options(found.cls, plugin_raw, relay.templates)
            for option, message in problems:
                self.problem(f"{where}.{option}", message, _line(options, option))
            concurrency = options.get("max_concurrency", 4)
            if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
                self.problem(f"{where}.max_concurrency", "expected a positive integer",
                             _line(options, "max_concurrency"))
                concurrency = 1
            retry = self.section(options.get("retry"), f"{where}.retry", RetryPolicy, options)
            fetch = self.fetch(options.get("fetch"), where, _line(options, "fetch") or aline)
            if problems:
                continue
            try:
                action = found.cls(str(name), values, relay)
                for message in action.check():
                    self.problem(where, message, aline)
                fetch = tuple(dict.fromkeys([*fetch, *action.fetches()]))
            except Exception as exc:
                self.problem(where, f"cannot be set up: {exc}", aline)
                continue
            if fetch and relay.suki is None:
                self.problem(where, f"fetching {', '.join(fetch)} needs the top-level `suki:` "
                             "section (base_url, partner_id, partner_token)", aline)
            out[str(name)] = ActionSpec(str(name), str(type_name), action, concurrency, retry,
                                        fetch)
        return out

    def fetch(self, raw: Any, where: str, line: int | None) -> tuple[str, ...]:
        """The core ``fetch:`` option: a list of link relations (suki_relay.fetch)."""
        if raw is None:
            return ()
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            self.problem(f"{where}.fetch", f"expected a list of link relations: "
                         f"{', '.join(RELATIONS)}", line)
            return ()
        bad = unknown_relations(raw)
        if bad:
            self.problem(f"{where}.fetch", f"unknown link relation(s) {', '.join(bad)}; expected "
                         f"any of {', '.join(RELATIONS)}", line)
            return ()
        return tuple(dict.fromkeys(raw))

    def action_list(self, raw: Any, where: str, actions: dict[str, ActionSpec],
                    line: int | None) -> list[str]:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            self.problem(where, "expected a list of action names", line)
            return []
        for name in raw:
            if name not in actions and not any(p.where.startswith(f"actions.{name}")
                                               for p in self.problems):
                known = ", ".join(actions) or "none defined"
                self.problem(where, f"unknown action {name!r}; defined: {known}", line)
        return [str(n) for n in raw]

    def rules(self, raw: Any, actions: dict[str, ActionSpec], line: int | None) -> list[Rule]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.problem("rules", "expected a list of rules", line)
            return []
        rules: list[Rule] = []
        names: set[str] = set()
        for i, item in enumerate(raw):
            rline = _line(item) or line
            if not isinstance(item, dict):
                self.problem(f"rules[{i}]", "expected a mapping with name, when, do", rline)
                continue
            name = str(item.get("name") or f"rule {i + 1}")
            where = f"rule {name!r}"
            if name in names:
                self.problem(where, "rule name used twice", rline)
            names.add(name)
            for key in item:
                if key not in ("name", "when", "do", "stop"):
                    self.problem(f"{where}.{key}", "unknown key; expected name, when, do, stop",
                                 _line(item, key))
            errors: list[tuple[str, str]] = []
            condition = compile_condition(item.get("when"), f"{where}.when", errors)
            for sub, message in errors:
                self.problem(sub, message, _line(item, "when"))
            if "do" not in item:
                self.problem(where, "missing `do:` (the list of actions to run)", rline)
            do = self.action_list(item.get("do") or [], f"{where}.do", actions,
                                  _line(item, "do") or rline)
            stop = item.get("stop", False)
            if not isinstance(stop, bool):
                self.problem(f"{where}.stop", "expected true or false", _line(item, "stop"))
            rules.append(Rule(name, condition, do, bool(stop),
                              required_statuses(item.get("when"))))
        return rules

    def retention(self, raw: Any, line: int | None) -> float | None:
        if raw is None:
            return None
        days = raw.get("days") if isinstance(raw, dict) else None
        if not isinstance(days, int | float) or isinstance(days, bool) or days <= 0:
            self.problem("retention.days", "expected a positive number of days", line)
            return None
        return float(days)
