"""Options declared as data, and the one validator every part of actions.yaml goes through.

An action type declares ``options = {"url": Option(str, required=True)}``. A config
section is a frozen dataclass whose fields are declared with :func:`setting`, which wraps
the same :class:`Option`; an Option whose ``kind`` is such a dataclass is a nested
section (``retry:`` inside an action, ``delivery:`` at the top). :func:`validate` checks
a YAML mapping against either and returns the values and every :class:`Problem` found,
each at the line of the offending key: unknown keys, types, ranges, choices, and the
option's own ``check``.

A value that came from an unset ``${VAR}`` is :class:`Unresolved`: the missing variable
is the problem already reported, so it is accepted here without further checks (no
misleading follow-on messages such as "expected https").
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

from suki_relay.errors import Problem

if TYPE_CHECKING:
    from suki_relay.deliver.templates import Templates


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of an action type or a config section, declared as data."""

    kind: type | tuple[type, ...] = str  # a tuple: any of; a section dataclass: a nested mapping
    required: bool = False
    default: Any = None
    secret: bool = False  # masked wherever the relay prints it, hidden from repr()
    template: bool = True  # strings inside are Jinja templates rendered per delivery
    html: bool = False  # templates autoescape HTML
    choices: tuple[Any, ...] = ()
    help: str = ""
    positive: bool = False  # numbers: more than 0
    min: float | None = None  # numbers: at least this
    max: float | None = None  # numbers: at most this
    finite: bool = True  # numbers: .nan and .inf are refused
    check: Callable[[Any], str | None] | None = None  # a further test: a message, or None
    convert: Callable[[Any], Any] | None = None  # applied to the value once it passed


class Unresolved(str):
    """The text of a value whose ``${VAR}`` could not be substituted (already reported)."""


def setting(default: Any = dataclasses.MISSING, kind: type | tuple[type, ...] | None = None,
            default_factory: Any = dataclasses.MISSING, key: str | None = None,
            **option: Any) -> Any:
    """A field of a config section (or of Config, or of an action's spec), declared with
    the Option that validates it: the one place its type, default, range and help are
    written.

    ``kind`` defaults to the type of ``default``; settings are never templates. A secret
    setting is left out of the section's repr(). An absent key keeps the field's default
    (``default_factory()`` for a mutable or section default). ``key``: the key in the
    file, when it is not the field's name.
    """
    if kind is None:
        kind = type(default)
    if default is not dataclasses.MISSING:
        declared_default = default
    elif default_factory is not dataclasses.MISSING:
        declared_default = default_factory()
    else:
        declared_default = None
    opt = Option(kind, default=declared_default, template=False, **option)
    metadata: dict[str, Any] = {"option": opt}
    if key is not None:
        metadata["key"] = key
    return dataclasses.field(default=default, default_factory=default_factory,
                             repr=not opt.secret, metadata=metadata)


def is_section(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


@cache
def section_options(cls: type) -> dict[str, Option]:
    """The options of a section dataclass, from its fields declared with setting()."""
    return {f.name: f.metadata.get("option") or Option(f.type if isinstance(f.type, type)
                                                        else object, template=False)
            for f in dataclasses.fields(cls)}


@cache
def declared(cls: type) -> dict[str, Option]:
    """The keys of a class declared with setting() (its fields declared otherwise are not
    read from the file), each with its Option: ``{key in the file: Option}``."""
    return {f.metadata.get("key", f.name): f.metadata["option"]
            for f in dataclasses.fields(cls) if "option" in f.metadata}


@cache
def field_names(cls: type) -> dict[str, str]:
    """``{key in the file: field name}`` of the keys declared() finds."""
    return {f.metadata.get("key", f.name): f.name
            for f in dataclasses.fields(cls) if "option" in f.metadata}


def line_of(mapping: Any, key: Any = None) -> int | None:
    """The line of ``key`` in a mapping loaded from YAML (or of the mapping itself)."""
    lines = getattr(mapping, "lines", None)
    if lines is not None and key is not None and key in lines:
        return int(lines[key])
    return getattr(mapping, "line", None)


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
          list: "a list", dict: "a mapping"}


def kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_NAMES.get(k, "a mapping" if is_section(k) else k.__name__) for k in kinds)


def validate(options: Mapping[str, Option], raw: Any, where: str = "",
             templates: Templates | None = None) -> tuple[dict[str, Any], list[Problem]]:
    """Check the mapping ``raw`` against ``options``: (values with defaults, problems).

    ``where`` is the dotted path of ``raw`` (empty at the top level). Strings of options
    with ``template=True`` are compiled with ``templates`` when it is given.
    """
    problems: list[Problem] = []
    prefix = f"{where}." if where else ""
    for key in raw:
        if key not in options:
            problems.append(unknown_key(key, options, raw, where))
    values: dict[str, Any] = {}
    for key, opt in options.items():
        here = f"{prefix}{key}"
        value = raw.get(key)
        line = line_of(raw, key) if key in raw else line_of(raw)
        if isinstance(value, Unresolved):
            values[key] = value if _accepts(opt.kind, str) else opt.default
            continue
        if is_section(opt.kind):
            values[key] = _section(opt, value, here, line, templates, problems)
            continue
        if value is None:
            if opt.required:
                problems.append(Problem(here, f"required option missing ({opt.help or kind_name(opt.kind)})",
                                        line))
            value = opt.default
            if opt.template and templates is not None:
                value = templates.compile_value(value, opt.html, name=key)
            values[key] = value
            continue
        message = _problem(opt, value)
        if message is None and opt.template and templates is not None:
            try:
                value = templates.compile_value(value, html=opt.html, name=key)
            except Exception as exc:  # jinja2.TemplateSyntaxError and friends
                message = f"template error: {exc}"
        if message is not None:
            problems.append(Problem(here, message, line))
            values[key] = opt.default  # reported; what reads on finds the default, not a gap
            continue
        if isinstance(value, int) and not isinstance(value, bool) and _accepts(opt.kind, float) \
                and not _accepts(opt.kind, int):
            value = float(value)
        values[key] = opt.convert(value) if opt.convert else value
    return values, problems


def unknown_key(key: Any, options: Mapping[str, Option], raw: Any, where: str = "") -> Problem:
    """A key that is none of ``options``, with the one it most likely meant."""
    known = ", ".join(sorted(options)) or "none"
    what = "option" if where else "key"
    close = difflib.get_close_matches(str(key), list(options), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return Problem(f"{where}.{key}" if where else str(key),
                   f"unknown {what}; {hint}expected one of: {known}", line_of(raw, key))


def build(cls: type, raw: Any, where: str,
          templates: Templates | None = None) -> tuple[Any, list[Problem]]:
    """A section dataclass from its mapping: (instance, or None if anything was wrong; problems)."""
    values, problems = validate(section_options(cls), raw, where, templates)
    if problems:
        return None, problems
    return cls(**{k: v for k, v in values.items() if k in raw}), problems  # absent: defaults


def _section(opt: Option, value: Any, where: str, line: int | None,
             templates: Templates | None, problems: list[Problem]) -> Any:
    cls: type = opt.kind  # type: ignore[assignment]
    if value is None:
        if opt.default is not None or not opt.required:
            return opt.default
        value = {}
    if not isinstance(value, Mapping):
        problems.append(Problem(where, f"expected a mapping of: {', '.join(section_options(cls))}",
                                line))
        return opt.default
    built, found = build(cls, value, where, templates)
    problems.extend(found)
    if built is not None and opt.check is not None:
        message = opt.check(built)
        if message:
            problems.append(Problem(where, message, line))
    return built if built is not None else opt.default


def _accepts(kind: type | tuple[type, ...], t: type) -> bool:
    return t in (kind if isinstance(kind, tuple) else (kind,))


def _problem(opt: Option, value: Any) -> str | None:
    """What is wrong with one present value, or None."""
    kinds = opt.kind if isinstance(opt.kind, tuple) else (opt.kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        return f"expected {kind_name(opt.kind)}, got {_shown(value)}"
    if opt.required and value == "":
        return f"required, and empty ({opt.help or kind_name(opt.kind)})"
    if opt.choices and value not in opt.choices:
        shown = repr(value) if isinstance(value, str) and len(value) <= 40 else _shown(value)
        return f"expected one of {list(opt.choices)}, got {shown}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if opt.finite and not math.isfinite(value):
            return f"expected a finite number, got {value}"
        if opt.positive and not value > 0:
            what = "number" if float in kinds else "integer"
            return f"expected a positive {what}, got {value:g}"
        if opt.min is not None and not value >= opt.min:
            return f"expected at least {opt.min:g}, got {value:g}"
        if opt.max is not None and not value <= opt.max:
            return f"expected at most {opt.max:g}, got {value:g}"
    if opt.check is not None:
        return opt.check(value)
    return None


def _shown(value: Any) -> str:
    """A value's type (never the value: it may be a secret)."""
    if isinstance(value, bool):
        return repr(value).lower()
    for kind in (str, dict, list):
        if isinstance(value, kind):
            return _NAMES[kind]
    return type(value).__name__
