"""The one template environment: sandboxed Jinja, undefined names are errors.

Every string option of an action is compiled once, when the config loads (syntax errors
surface at check time), and rendered per delivery. Strings with no Jinja markup stay
plain strings, so rendering them costs nothing, and a config with no template at all
never imports Jinja (the environment is made by the first string that needs it).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suki_relay.deliver.fetch import empty_note, note_text

if TYPE_CHECKING:
    import jinja2
    import jinja2.runtime

_SLACK_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def slack_escape(value: Any) -> str:
    """Escape Slack's control characters so payload text cannot add mentions or links."""
    return str(value).translate(_SLACK_ESCAPES)


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``value`` (a parsed payload) with ``fn`` applied to every string inside it: how an
    action escapes payload text for where it goes (Slack markup, a file name) before its
    templates see it, leaving text written in the template itself as written."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, fn) for v in value]
    return value


_DICT_ATTRIBUTES = frozenset(dir(dict))


@cache
def _environment_class() -> type[jinja2.Environment]:
    """The sandboxed environment's class, made (and Jinja imported) when first needed."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Environment(ImmutableSandboxedEnvironment):
        def getattr(self, obj: Any, attribute: str) -> Any:
            """``event.status`` on a payload: for a plain dict, the attribute lookup Jinja
            tries first can only find dict's own methods, so skip straight to the key when
            it is not one of them (same result, without raising and catching
            AttributeError)."""
            if type(obj) is dict and attribute not in _DICT_ATTRIBUTES and attribute in obj:
                return obj[attribute]
            return super().getattr(obj, attribute)

    return _Environment


def is_template_error(exc: BaseException) -> bool:
    """``exc`` is a Jinja template error (none can be raised while Jinja is not imported)."""
    jinja = sys.modules.get("jinja2")
    return jinja is not None and isinstance(exc, jinja.TemplateError)


def _defined(value: Any) -> Any:
    """``value``, or the undefined-name error a template would raise for it (a filter that
    serialises would otherwise turn a typo into a TypeError, retried at delivery)."""
    import jinja2

    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return value


class Literal(str):
    """Text substituted from ``${VAR}`` into actions.yaml: literal, never template markup.

    ``template`` is the source to compile if the string it is part of is a template, with
    the substituted parts quoted so that ``{{ 7*7 }}`` in a variable stays that text.
    """

    template: str

    def __new__(cls, text: str, template: str) -> Literal:
        self = super().__new__(cls, text)
        self.template = template
        return self

    @staticmethod
    def quote(text: str) -> str:
        """``text`` as Jinja source that renders it verbatim."""
        if "{" not in text:
            return text
        return "{{ " + repr(text).replace("{", "\\x7b").replace("}", "\\x7d") + " }}"


class Template:
    """A compiled option string; ``source`` is kept for messages and dry runs, ``name``
    (the option) is attached to render errors as ``exc.option``."""

    __slots__ = ("compiled", "name", "source")

    def __init__(self, source: str, compiled: jinja2.Template, name: str | None = None):
        self.source = source
        self.compiled = compiled
        self.name = name

    def render(self, scope: Scope) -> str:
        env = self.compiled.environment
        try:
            return env.concat(self.compiled.root_render_func(  # type: ignore[attr-defined]
                scope.context(env)))
        except Exception as exc:
            if self.name is not None and getattr(exc, "option", None) is None:
                exc.option = self.name  # type: ignore[attr-defined]
            env.handle_exception()
            raise  # not reached: handle_exception re-raises

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


class Scope:
    """What the templates of one delivery see: the environment's globals (the sandbox's
    own: its ``range`` refuses more than 100,000 items, where Jinja's defaults would not),
    then the context. Jinja's own ``render`` merges the globals into a new dict and builds
    a new context on every call, which costs more than a short template itself; a scope
    does both once, and clears what a template set before the next one renders (a
    ``{% set %}`` never leaks)."""

    __slots__ = ("_context", "_vars")

    def __init__(self, context: dict[str, Any]):
        self._vars = context
        self._context: jinja2.runtime.Context | None = None

    def context(self, env: jinja2.Environment) -> jinja2.runtime.Context:
        ctx = self._context
        if ctx is None or ctx.environment is not env:
            ctx = self._context = env.context_class(env, {**env.globals, **self._vars}, None, {})
        else:
            ctx.vars = {}
            ctx.exported_vars = set()
        return ctx


class Templates:
    """The relay's template environment (``templates:``, the folder ``{% include %}``
    reads). The Jinja environment is made by the first string with template markup."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder
        self._env: jinja2.Environment | None = None

    @property
    def env(self) -> jinja2.Environment:
        if self._env is None:
            import jinja2

            loader = jinja2.FileSystemLoader(str(self.folder)) if self.folder else None
            env = _environment_class()(
                loader=loader,
                undefined=jinja2.StrictUndefined,
                autoescape=False,
                keep_trailing_newline=True,
            )
            env.filters["slack_escape"] = slack_escape
            env.filters["json"] = lambda v: json.dumps(_defined(v), ensure_ascii=False)
            env.filters["note_text"] = lambda v: note_text(_defined(v))
            env.tests["empty_note"] = lambda v: empty_note(_defined(v))
            self._env = env
        return self._env

    def compile(self, source: str, html: bool = False, name: str | None = None) -> Template | str:
        """Compile ``source``; raises jinja2.TemplateSyntaxError."""
        text = source.template if isinstance(source, Literal) else source
        if "{{" not in text and "{%" not in text:
            return str(source)
        if html:
            text = f"{{% autoescape true %}}{text}{{% endautoescape %}}"
        return Template(str(source), self.env.from_string(text), name)

    def compile_value(self, value: Any, html: bool = False, name: str | None = None) -> Any:
        """Compile every string inside a YAML structure (dicts, lists)."""
        if isinstance(value, str):
            return self.compile(value, html, name)
        if isinstance(value, dict):
            return {k: self.compile_value(v, html, name) for k, v in value.items()}
        if isinstance(value, list):
            return [self.compile_value(v, html, name) for v in value]
        return value


def render_value(value: Any, context: dict[str, Any]) -> Any:
    """Render a structure produced by Templates.compile_value (one scope for all of it)."""
    if isinstance(value, str):
        return value
    return _render(value, Scope(context))


def _render(value: Any, scope: Scope) -> Any:
    if isinstance(value, Template):
        return value.render(scope)
    if isinstance(value, dict):
        return {k: _render(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, scope) for v in value]
    return value
