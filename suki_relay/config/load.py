"""The one config loader: actions.yaml in, a validated Config out, or every Problem found.

Loading reads YAML with line numbers (yaml_lines.py), substitutes ``${...}``
(substitute.py: substituted text is literal, never template markup), validates every
section through the one validator (options.validate), builds every action through the
plugin registry, compiles every template and every rule. Each problem names the file,
the line of the offending key, and what was expected, so `suki-relay check` lists them all.

Adding a section (say ``archive:``) takes two declarative steps:

1. a frozen dataclass whose fields are declared with ``setting()``, in sections.py or in
   the module of the feature (as console/settings.py does)::

       @dataclass(frozen=True)
       class ArchiveSettings:
           directory: str | None = setting(None, kind=str, help="where bodies are copied")
           max_mb: int = setting(512, positive=True)

2. a field of the same name on Config, declared with ``setting()``:
   ``archive: ArchiveSettings = setting(kind=ArchiveSettings, default_factory=ArchiveSettings)``
   (``setting(None, kind=ArchiveSettings)``: absent means None; ``required=True``: it must
   be there; ``check=f``: f(built section) returns a message about the section as a whole).
   SECTIONS, what the loader validates the file against, is read from those fields.

A setting takes ``positive``, ``min``, ``max``, ``choices``, ``finite`` (on by default),
``secret`` (hidden from repr), ``check`` and ``convert``. A per-action core option (next to
``type``, ``max_concurrency``, ``retry``, ``fetch``) is a field of ActionSpec declared with
``setting()`` (ACTION_OPTIONS is read from them).
"""
from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suki_relay import store
from suki_relay.config.console import ConsoleSettings
from suki_relay.config.console import check as check_console
from suki_relay.config.routing import Rule, action_names, compile_rules
from suki_relay.config.sections import (
    DeliverySettings,
    Metrics,
    Receiver,
    RecoverySettings,
    Retention,
    SpoolSettings,
)
from suki_relay.config.substitute import substitute, unresolved
from suki_relay.config.yaml_lines import LineMap, load_yaml
from suki_relay.deliver import registry as plugins
from suki_relay.deliver.action import Action, RelayContext
from suki_relay.deliver.fetch import RELATIONS, unknown_relations
from suki_relay.deliver.retry import RetryPolicy
from suki_relay.deliver.suki_api import SukiSettings
from suki_relay.deliver.templates import Templates
from suki_relay.errors import ConfigError, Problem
from suki_relay.options import Option, declared, is_section, line_of, setting, unknown_key, validate
from suki_relay.tracing import TracingSettings
from suki_relay.tracing import check as check_tracing

ENV_CONFIG = "SUKI_RELAY_CONFIG"
DEFAULT_FILE = "actions.yaml"
DEFAULT_STORE = "sqlite:///suki-relay.db"


def _relations(value: Any) -> str | None:
    bad = unknown_relations([value] if isinstance(value, str) else value)
    if bad:
        return f"unknown link relation(s) {', '.join(bad)}; expected any of {', '.join(RELATIONS)}"
    return None


@dataclass(frozen=True)
class ActionSpec:
    """One action of ``actions:``: the options the relay reads next to ``type`` (declared
    with setting(), as the sections are; the action type's own options are its
    ``options``), and the action built from the rest."""

    name: str
    action: Action
    type: str = setting(kind=str, required=True, help="the action type")
    max_concurrency: int = setting(4, positive=True,
                                   help="at most this many deliveries at once, across all processes")
    retry: RetryPolicy = setting(kind=RetryPolicy, default_factory=RetryPolicy,
                                 help="exponential backoff with jitter, for retryable failures")
    pause_after: int = setting(10, min=0,
                               help="failed attempts in a row that pause the action (0: never)")
    probe_every_seconds: float = setting(60.0, positive=True,
                                         help="while paused, one delivery is tried this often")
    fetch: tuple[str, ...] = setting(
        kind=(list, str), default_factory=tuple, check=_relations,
        help="link relations fetched from Suki before each attempt",
        convert=lambda v: tuple(dict.fromkeys([v] if isinstance(v, str) else v)))
    lines: dict[str, int] = field(default_factory=dict, repr=False)  # of its options, for check


@dataclass(repr=False)
class Config:
    """A validated actions.yaml. Each field declared with setting() is a key of the file,
    with its type, default, range and help written there once (``SECTIONS`` lists them, in
    this order); the other fields say where the file was read from and what was built."""

    file: Path
    base_dir: Path
    receiver: Receiver = setting(kind=Receiver, required=True,
                                 help="how requests are received and verified")
    store_url: str = setting(DEFAULT_STORE, key="store", check=store.url_problem,
                             help="sqlite:///FILE (relative to actions.yaml) or "
                                  "postgresql://...")
    templates: Templates = setting(None, kind=str,  # type: ignore[assignment]  # built
                                   help="folder for {% include %} / {% import %}")
    delivery: DeliverySettings = setting(kind=DeliverySettings, default_factory=DeliverySettings,
                                         help="how each process delivers")
    metrics: Metrics = setting(kind=Metrics, default_factory=Metrics,
                               help="the Prometheus endpoint")
    retention: Retention = setting(kind=Retention, default_factory=Retention,
                                   help="how long finished events are kept")
    suki: SukiSettings | None = setting(None, kind=SukiSettings,
                                        help="Suki's API: for fetch:, fetch_note, fhir and recovery")
    console: ConsoleSettings = setting(kind=ConsoleSettings, default_factory=ConsoleSettings,
                                       check=check_console,
                                       help="the operator console in the browser (off unless "
                                            "enabled)")
    recovery: RecoverySettings = setting(kind=RecoverySettings,
                                         default_factory=RecoverySettings,
                                         help="finding missed sessions through Suki's status API")
    spool: SpoolSettings = setting(kind=SpoolSettings, default_factory=SpoolSettings,
                                   help="where a node commits while PostgreSQL cannot")
    tracing: TracingSettings = setting(kind=TracingSettings, default_factory=TracingSettings,
                                       check=check_tracing,
                                       help="OpenTelemetry tracing: one trace per event (off by "
                                            "default)")
    # checked here for their type, then built by the loader
    actions: dict[str, ActionSpec] = setting(kind=dict, default_factory=dict,
                                             help="action name: its type and options")
    rules: list[Rule] = setting(kind=list, default_factory=list,
                                help="in order: name, when (conditions), do (action names), stop")
    unmatched: list[str] = setting(kind=(list, str), default_factory=list,
                                   help="the actions run for an event no rule matched")
    on_failure: list[str] = setting(kind=(list, str), default_factory=list,
                                    help="the actions run when a delivery fails for good")
    on_pause: list[str] | None = setting(None, kind=(list, str),
                                         help="the actions run when an action pauses or resumes "
                                              "(default: on_failure)")
    fingerprint: str = ""  # of the config text: which config a process runs (console)

    @property
    def retention_days(self) -> float | None:
        return self.retention.days

    @property
    def recovery_enabled(self) -> bool:
        return self.suki is not None and self.recovery.enabled

    def __repr__(self) -> str:  # no secrets: the store URL may hold a password
        return (f"Config(file={str(self.file)!r}, store={self.store_url.split(':')[0]}, "
                f"actions={list(self.actions)}, rules={[r.name for r in self.rules]})")


SECTIONS: dict[str, Option] = declared(Config)  # the top level of actions.yaml
ACTION_OPTIONS: dict[str, Option] = declared(ActionSpec)  # next to an action's type


def fingerprint(text: str) -> str:
    """A config's version: the start of the SHA-256 of its text as written (as `sha256sum`
    prints it for a file with LF line endings)."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get(ENV_CONFIG) or DEFAULT_FILE)


def read_config(path: str | os.PathLike[str] | None = None) -> tuple[str, Path]:
    """The text of actions.yaml; a missing file is a ConfigError that suggests `init`."""
    file = config_path(path)
    try:
        return file.read_text(encoding="utf-8"), file
    except FileNotFoundError:
        hint = "; `suki-relay init` writes a starter config" if path is None else ""
        message = f"no config file {str(file)!r} (give -c FILE or set {ENV_CONFIG}{hint})"
    except OSError as exc:
        message = f"cannot read: {exc.strerror}"
    raise ConfigError([Problem("config", message, file=str(file))])


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    text, file = read_config(path)
    return parse_config(text, file)


@dataclass(frozen=True)
class StoreSettings:
    """What the store commands need: the store, where relative paths start, the spool."""

    store_url: str
    base_dir: Path
    spool: SpoolSettings


def load_store_settings(path: str | os.PathLike[str] | None = None) -> StoreSettings:
    """Only the store settings (store:, spool:): the store commands need no webhook secret."""
    text, file = read_config(path)
    raw, problems = _load(text, file)
    raw = substitute(raw.like({k: raw[k] for k in ("store", "spool") if k in raw}), "", None,
                      problems)
    values, found = validate({k: SECTIONS[k] for k in ("store", "spool")}, raw)
    _raise([*problems, *found], file)
    return StoreSettings(values["store"], file.resolve().parent, values["spool"])


def parse_config(text: str, file: Path) -> Config:
    base_dir = file.resolve().parent
    raw, problems = _load(text, file)
    raw = substitute(raw, "", None, problems)
    _secret_alias(raw.get("receiver"), problems)
    values, found = validate(SECTIONS, raw)
    problems += found
    templates = Templates(_templates_dir(values["templates"], base_dir, raw, problems))
    relay = RelayContext(templates=templates, base_dir=base_dir, suki=values["suki"])
    context_ok = values["suki"] is not None or "suki" not in raw  # else "needs suki:" misleads
    actions = _actions(values["actions"] or {}, relay, context_ok, problems)
    defined = {str(name) for name in values["actions"] or {}}
    rules = compile_rules(values["rules"] or [], defined, problems)
    unmatched = action_names(values["unmatched"] or [], "unmatched", defined,
                             line_of(raw, "unmatched"), problems)
    on_failure = action_names(values["on_failure"] or [], "on_failure", defined,
                              line_of(raw, "on_failure"), problems)
    on_pause = None if values["on_pause"] is None else action_names(
        values["on_pause"], "on_pause", defined, line_of(raw, "on_pause"), problems)
    if "recovery" in raw and values["recovery"].enabled and values["suki"] is None and \
            context_ok:
        problems.append(Problem("recovery", "needs the top-level `suki:` section (Suki's status "
                                "API is how missing sessions are checked); or set enabled: false",
                                line_of(raw, "recovery")))
    console = values["console"]
    if console.enabled and values["receiver"] and console.path in (values["receiver"].path,
                                                                   values["metrics"].path):
        problems.append(Problem("console.path", "already the webhook or metrics path",
                                line_of(raw.get("console"), "path")))
    _raise(problems, file)
    sections = {name: values[name] for name, opt in SECTIONS.items() if is_section(opt.kind)}
    return Config(file=file, base_dir=base_dir, store_url=values["store"], templates=templates,
                  actions=actions, rules=rules, unmatched=unmatched, on_failure=on_failure,
                  on_pause=on_pause, fingerprint=fingerprint(text), **sections)


def _secret_alias(receiver: Any, problems: list[Problem]) -> None:
    """``secret: x`` is short for ``secrets: [x]``."""
    if isinstance(receiver, LineMap) and "secret" in receiver:
        if "secrets" in receiver:
            problems.append(Problem("receiver.secret", "give either secret or secrets, not both",
                                    line_of(receiver, "secret")))
        receiver["secrets"] = receiver.pop("secret")
        receiver.lines["secrets"] = receiver.lines.pop("secret")


def _raise(problems: list[Problem], file: Path) -> None:
    if problems:
        raise ConfigError([Problem(p.where, p.message, p.line, str(file)) for p in problems])


def _load(text: str, file: Path) -> tuple[Any, list[Problem]]:
    raw, problems = load_yaml(text)
    if problems and raw is None:
        _raise(problems, file)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        _raise([Problem("config", "expected a mapping at the top level", 1)], file)
    return raw if isinstance(raw, LineMap) else LineMap(raw), problems


# ---------------------------------------------------------------- the parts that are not flat


def _templates_dir(value: str | None, base_dir: Path, raw: Any,
                   problems: list[Problem]) -> Path | None:
    if value is None:
        default = base_dir / "templates"
        return default if default.is_dir() else None
    folder = base_dir / str(value)
    if not folder.is_dir():
        problems.append(Problem("templates", f"folder {folder} does not exist",
                                line_of(raw, "templates")))
        return None
    return folder


def _actions(raw: dict[Any, Any], relay: RelayContext, context_ok: bool,
             problems: list[Problem]) -> dict[str, ActionSpec]:
    types = plugins.discover(only={str(options.get("type")) for options in raw.values()
                                   if isinstance(options, dict)})
    out: dict[str, ActionSpec] = {}
    for name, options in raw.items():
        where, line = f"actions.{name}", line_of(raw, name)
        if not isinstance(options, dict):
            problems.append(Problem(where, "expected a mapping with at least `type:`", line))
            continue
        core = _with_lines({k: v for k, v in options.items() if k in ACTION_OPTIONS}, options)
        core_values, found = validate(ACTION_OPTIONS, core, where)
        problems += found
        type_name = core_values["type"]
        if not type_name:  # a misspelt core option (`tyep: http`) is why, most likely
            problems += [unknown_key(k, ACTION_OPTIONS, options, where) for k in options
                         if k not in ACTION_OPTIONS and difflib.get_close_matches(
                             str(k), list(ACTION_OPTIONS), n=1, cutoff=0.6)]
        found_type = types.get(str(type_name)) if type_name else None
        if type_name and found_type is None:
            known = ", ".join(sorted(t for t, v in types.items() if v.error is None)) or "none"
            problems.append(Problem(f"{where}.type", f"unknown action type {type_name!r}; "
                                    f"installed: {known}", line_of(options, "type")))
        if found_type is not None and found_type.cls is None:
            problems.append(Problem(f"{where}.type", f"plugin {type_name!r} from "
                                    f"{found_type.package} cannot be loaded: {found_type.error}",
                                    line_of(options, "type")))
        if found_type is None or found_type.cls is None:
            continue
        cls = found_type.cls
        plugin_raw = {k: v for k, v in options.items() if k not in ACTION_OPTIONS}
        values, plugin_found = validate(cls.options, _with_lines(plugin_raw, options), where,
                                        relay.templates)
        problems += plugin_found
        if found or plugin_found or unresolved(values) or not context_ok:
            continue  # the problem is reported; checking further would only mislead
        try:
            action = cls(str(name), values, relay)
            action.max_concurrency = core_values["max_concurrency"]
            problems += [Problem(where, message, _option_line(options, message) or line)
                         for message in action.check()]
            fetch = tuple(dict.fromkeys([*core_values["fetch"], *action.fetches()]))
        except Exception as exc:
            problems.append(Problem(where, f"cannot be set up: {exc}", line))
            continue
        if fetch and relay.suki is None:
            problems.append(Problem(where, f"fetching {', '.join(fetch)} needs the top-level "
                                    "`suki:` section (base_url, partner_id, partner_token)", line))
        lines = {str(k): n for k, n in getattr(options, "lines", {}).items()}
        out[str(name)] = ActionSpec(name=str(name), action=action, lines=lines,
                                    **{**core_values, "fetch": fetch})
    return out


def _option_line(options: Any, message: str) -> int | None:
    """The line of the option a check() message starts with ("auth.kid: ..." -> auth)."""
    head = message.split(":", 1)[0].split(".", 1)[0].strip()
    return line_of(options, head) if head and isinstance(options, LineMap) and head in options \
        else None


def _with_lines(part: dict[Any, Any], whole: Any) -> Any:
    """``part`` of a YAML mapping, keeping the line numbers of ``whole``."""
    return whole.like(part) if isinstance(whole, LineMap) else part
