"""YAML with line numbers, and syntax errors told plainly at the line that is wrong.

Every mapping loads as a :class:`LineMap`, which remembers its own line and the line of
each key, so a problem is reported where the offending key is, not where its section is.
"""

from __future__ import annotations

from typing import Any

import yaml

from suki_relay.errors import Problem


class LineMap(dict):  # type: ignore[type-arg]
    """A mapping that remembers the line of itself and of each key."""

    line: int | None = None

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lines: dict[Any, int] = {}

    def like(self, items: dict[Any, Any]) -> LineMap:
        """Another mapping with these items and this one's lines."""
        out = LineMap(items)
        out.line, out.lines = self.line, self.lines
        return out


class _Loader(yaml.SafeLoader):
    duplicates: list[tuple[str, int]]


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineMap:
    loader.flatten_mapping(node)
    result = LineMap()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value", key_node.start_mark) from None
        if key in result:
            loader.duplicates.append((str(key), key_node.start_mark.line + 1))
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = key_node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# (what PyYAML says, whether its context line is the one to show, what we say instead)
_PLAIN = [
    ("could not find expected ':'", True, "expected `key: value` on this line (is a ':' missing?)"),
    ("mapping values are not allowed here", False,
     "unexpected ':' (quote a value that contains ': ', or check the indentation)"),
    ("found character '\\t'", False, "a tab character: indent YAML with spaces"),
    ("expected ',' or ']'", True, "the list opened with [ on this line is not closed"),
    ("expected ',' or '}'", True, "the mapping opened with { on this line is not closed"),
    ("found unexpected end of stream", True, "the quoted string that starts here is not closed"),
    ("expected <block end>", False, "the indentation does not match the lines above"),
    ("found undefined alias", False, "an *alias names no &anchor"),
]


def syntax_problem(exc: yaml.YAMLError) -> Problem:
    """A YAML syntax error as one Problem, at the line a person would fix."""
    problem = str(getattr(exc, "problem", "") or exc)
    problem_mark = getattr(exc, "problem_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    for said, at_context, plain in _PLAIN:
        if said in problem:
            mark = context_mark if at_context and context_mark is not None else problem_mark
            return Problem("yaml", plain, mark.line + 1 if mark else None)
    return Problem("yaml", f"not valid YAML: {problem}",
                   problem_mark.line + 1 if problem_mark else None)


def load_yaml(text: str) -> tuple[Any, list[Problem]]:
    """(the document, problems); on a syntax error the document is None."""
    loader = _Loader(text)
    loader.duplicates = []
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as exc:
        return None, [syntax_problem(exc)]
    finally:
        loader.dispose()
    return raw, [Problem(key, "key appears twice; the second would silently win", line)
                 for key, line in loader.duplicates]
