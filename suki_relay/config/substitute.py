"""``${VAR}``, ``${VAR:-default}`` and ``${file:/path}`` in actions.yaml (``$${`` is a literal ``${``).

Substituted text is literal: where the string it lands in is a template, the substituted
part is quoted (templates.Literal), so ``{{ 7*7 }}`` in a variable stays that text. A
variable that is not set is one problem, at its line; the value becomes Unresolved so
that nothing downstream reports a follow-on problem about it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from suki_relay.config.yaml_lines import LineMap
from suki_relay.deliver.templates import Literal
from suki_relay.errors import Problem
from suki_relay.options import Unresolved, line_of

_VAR = re.compile(r"\$(\$?)\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def substitute(value: Any, where: str, line: int | None, problems: list[Problem]) -> Any:
    """A copy of the YAML tree with ${...} replaced (mappings keep their lines)."""
    if isinstance(value, str):
        return _substitute_text(value, where, line, problems) if "${" in value else value
    if isinstance(value, dict):
        items = {k: substitute(v, f"{where}.{k}" if where else str(k), line_of(value, k),
                               problems) for k, v in value.items()}
        return value.like(items) if isinstance(value, LineMap) else items
    if isinstance(value, list):
        return [substitute(v, f"{where}[{i}]", line, problems) for i, v in enumerate(value)]
    return value


def _substitute_text(text: str, where: str, line: int | None, problems: list[Problem]) -> str:
    parts: list[tuple[str, bool]] = []  # (text, substituted)
    unresolved = False
    end = 0
    for m in _VAR.finditer(text):
        parts.append((text[end:m.start()], False))
        end = m.end()
        if m.group(1):
            parts.append(("${" + m.group(2) + "}", False))
            continue
        value = _variable(m.group(2), where, line, problems)
        unresolved = unresolved or value is None
        parts.append((value or "", True))
    parts.append((text[end:], False))
    plain = "".join(p for p, _ in parts)
    if unresolved:
        return Unresolved(plain)
    template = "".join(Literal.quote(p) if sub else p for p, sub in parts)
    return plain if template == plain else Literal(plain, template)


def _variable(expr: str, where: str, line: int | None, problems: list[Problem]) -> str | None:
    if expr.startswith("file:"):
        path = Path(expr[5:])
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            problems.append(Problem(where, f"secret file {path} cannot be read: {exc.strerror}", line))
            return None
    name, sep, default = expr.partition(":-")
    if not _NAME.fullmatch(name):
        problems.append(Problem(where, f"${{{expr}}}: expected ${{NAME}}, ${{NAME:-default}} or "
                                       "${file:/path}", line))
        return None
    if name in os.environ:
        return os.environ[name]
    if sep:
        return default
    problems.append(Problem(where, f"environment variable {name} is not set", line))
    return None


def unresolved(value: Any) -> bool:
    if isinstance(value, Unresolved):
        return True
    if isinstance(value, dict):
        return any(unresolved(v) for v in value.values())
    return isinstance(value, list) and any(unresolved(v) for v in value)
