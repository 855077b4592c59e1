"""The configuration reference, generated from the declarations `check` validates with.

Every section's options (SECTIONS and the section dataclasses' ``setting()`` fields), the
options every action takes (ACTION_OPTIONS) and each action type's own ``options`` are
read from the same :class:`~suki_relay.options.Option` objects the validator uses, so the
manual, `suki-relay plugins --options TYPE` and the JSON Schema (schema.py) cannot
disagree with `check`. A third-party action documents its options the same way: the
``help=`` of each Option and the class's ``description``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any

from suki_relay.config.load import ACTION_OPTIONS, SECTIONS
from suki_relay.config.routing import RULE_OPTIONS
from suki_relay.deliver.action import Action
from suki_relay.deliver.registry import ActionType, discover
from suki_relay.errors import RelayError
from suki_relay.options import Option, is_section, section_options

_KINDS = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
          dict: "mapping"}
BUILT_IN_PACKAGE = "suki-relay"


@dataclasses.dataclass(frozen=True)
class Row:
    """One option as the reference shows it."""

    name: str  # dotted below its table's section: `retry.max_attempts`
    kind: str
    default: str  # as YAML would write it; empty when there is none
    required: bool
    template: bool
    secret: bool
    choices: tuple[Any, ...]
    help: str
    section: bool  # a nested mapping, whose options follow as rows of their own

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def kind_of(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("section" if is_section(k) else _KINDS.get(k, k.__name__) for k in kinds)


def is_template(opt: Option) -> bool:
    """Strings in the value are Jinja templates rendered per delivery."""
    kinds = opt.kind if isinstance(opt.kind, tuple) else (opt.kind,)
    return opt.template and any(k in (str, list, dict) for k in kinds)


def shown_default(opt: Option) -> str:
    value = opt.default
    if value is None or opt.required or is_section(opt.kind) or (value == "" and opt.secret):
        return ""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        return value.replace("\n", "\\n")
    return json.dumps(value)


def rows(options: Mapping[str, Option], prefix: str = "") -> Iterator[Row]:
    """Each option, and the options of each nested section after it."""
    for name, opt in options.items():
        section = is_section(opt.kind)
        yield Row(f"{prefix}{name}", kind_of(opt.kind), shown_default(opt), opt.required,
                  is_template(opt), opt.secret, tuple(opt.choices), opt.help, section)
        if section:
            yield from rows(section_options(opt.kind), f"{prefix}{name}.")  # type: ignore[arg-type]


def missing_help(options: Mapping[str, Option]) -> list[str]:
    """The options (nested ones included) declared without help text."""
    return [r.name for r in rows(options) if not r.help.strip()]


def action_types(built_in_only: bool = False) -> dict[str, ActionType]:
    """The installed action types that load, by name (only this package's, if asked)."""
    return {name: t for name, t in sorted(discover().items())
            if t.cls is not None and (not built_in_only or t.package == BUILT_IN_PACKAGE)}


def action_type(name: str) -> ActionType:
    types = discover()
    found = types.get(name)
    if found is None:
        known = ", ".join(sorted(t for t, v in types.items() if v.cls)) or "none"
        raise RelayError(f"unknown action type {name!r}; installed: {known}")
    if found.cls is None:
        raise RelayError(f"plugin {name!r} from {found.package} cannot be loaded: {found.error}")
    return found


# ---------------------------------------------------------------- text, for the CLI

def text_for_type(found: ActionType) -> str:
    """`suki-relay plugins --options TYPE`: the type's options, then every action's."""
    cls: type[Action] = found.cls  # type: ignore[assignment]
    out = [f"{found.name} ({found.package} {found.version}): {cls.description}", ""]
    out += _text_table(list(rows(cls.options)))
    out += ["", "every action also takes:", ""]
    out += _text_table([r for r in rows(ACTION_OPTIONS) if r.name != "type"])
    return "\n".join(out)


def _text_table(items: list[Row]) -> list[str]:
    columns = ("option", "type", "default", "required", "template", "help")
    cells = [[r.name, r.kind, r.default or "-", "yes" if r.required else "",
              "yes" if r.template else "", _help(r)] for r in items]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns[:-1])]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, [*widths, 0], strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, [*widths, 0], strict=True)) for row in cells]
    return [line.rstrip() for line in lines]


def _help(row: Row) -> str:
    extra = []
    if row.choices:
        extra.append("one of " + ", ".join(str(c) for c in row.choices))
    if row.secret:
        extra.append("a secret, never printed")
    return "; ".join([row.help, *extra]) if row.help else "; ".join(extra)


# ---------------------------------------------------------------- Markdown, for the manual

def markdown_table(items: list[Row]) -> str:
    lines = ["| option | type | default | required | template | what it is |",
             "|---|---|---|---|---|---|"]
    for r in items:
        default = f"`{r.default}`" if r.default else ""  # a code span keeps its |
        lines.append(f"| `{r.name}` | {r.kind} | {default} | {'yes' if r.required else ''} | "
                     f"{'yes' if r.template else ''} | {_cell(_help(r))} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # outside a code span, | would end the cell


def markdown_sections() -> str:
    """Every top-level key of actions.yaml, then one table per section."""
    top = [r for r in rows(SECTIONS) if "." not in r.name]
    out = ["| key | type | default | required | what it is |", "|---|---|---|---|---|"]
    for r in top:
        name = f"[`{r.name}`](#{r.name})" if r.section else f"`{r.name}`"
        default = f"`{r.default}`" if r.default else ""  # a code span keeps its |
        out.append(f"| {name} | {r.kind} | {default} | {'yes' if r.required else ''} | "
                   f"{_cell(r.help)} |")
    text = "\n".join(out) + "\n"
    for r in top:
        if r.section:
            inner = [dataclasses.replace(x, name=x.name.split(".", 1)[1])
                     for x in rows(SECTIONS) if x.name.startswith(f"{r.name}.")]
            text += f"\n## `{r.name}` {{#{r.name}}}\n\n{r.help}.\n\n{markdown_table(inner)}"
    text += ("\n## `rules` {#rules}\n\nA list; each rule is a mapping of these "
             f"([conditions](configuration.md)):\n\n{markdown_table(list(rows(RULE_OPTIONS)))}")
    return text


def markdown_action(name: str) -> str:
    found = action_type(name)
    return markdown_table(list(rows(found.cls.options)))  # type: ignore[union-attr]


def markdown_every_action() -> str:
    return markdown_table(list(rows(ACTION_OPTIONS)))
