"""The one template environment: sandboxed Jinja, undefined names are errors.

Every string option of an action is compiled once, when the config loads (syntax errors
surface at check time), and rendered per delivery. Strings with no Jinja markup stay
plain strings, so rendering them costs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

_SLACK_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def slack_escape(value: Any) -> str:
    """Escape Slack's control characters so payload text cannot add mentions or links."""
    return str(value).translate(_SLACK_ESCAPES)


class Template:
    """A compiled option string; ``source`` is kept for messages and dry runs."""

    __slots__ = ("compiled", "source")

    def __init__(self, source: str, compiled: jinja2.Template):
        self.source = source
        self.compiled = compiled

    def render(self, context: dict[str, Any]) -> str:
        return self.compiled.render(context)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


class Templates:
    def __init__(self, folder: Path | None = None):
        loader = jinja2.FileSystemLoader(str(folder)) if folder else None
        self.env = ImmutableSandboxedEnvironment(
            loader=loader,
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
        )
        self.env.filters["slack_escape"] = slack_escape
        self.env.filters["json"] = lambda v: json.dumps(v, ensure_ascii=False)

    def compile(self, source: str, html: bool = False) -> Template | str:
        """Compile ``source``; raises jinja2.TemplateSyntaxError."""
        if "{{" not in source and "{%" not in source:
            return source
        text = f"{{% autoescape true %}}{source}{{% endautoescape %}}" if html else source
        return Template(source, self.env.from_string(text))

    def compile_value(self, value: Any, html: bool = False) -> Any:
        """Compile every string inside a YAML structure (dicts, lists)."""
        if isinstance(value, str):
            return self.compile(value, html)
        if isinstance(value, dict):
            return {k: self.compile_value(v, html) for k, v in value.items()}
        if isinstance(value, list):
            return [self.compile_value(v, html) for v in value]
        return value


def render_value(value: Any, context: dict[str, Any]) -> Any:
    """Render a structure produced by Templates.compile_value."""
    if isinstance(value, Template):
        return value.render(context)
    if isinstance(value, dict):
        return {k: render_value(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, context) for v in value]
    return value
