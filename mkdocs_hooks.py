"""MkDocs hooks (mkdocs.yml `hooks:`): the configuration reference, generated when the
manual is built from the declarations `check` validates with (suki_relay.config.reference).

A page asks for a table with an HTML comment on a line of its own:
``<!-- reference: sections -->`` (every top-level key and section),
``<!-- reference: every action -->`` (the options every action takes) or
``<!-- reference: action TYPE -->`` (one action type's own options). An unknown request
fails the build.
"""

from __future__ import annotations

import re
from typing import Any

from suki_relay.config import reference

_MARK = re.compile(r"^<!-- reference: (.+?) -->$", re.M)


def _expand(match: re.Match[str]) -> str:
    what = match.group(1).strip()
    if what == "sections":
        return reference.markdown_sections()
    if what == "every action":
        return reference.markdown_every_action()
    if what.startswith("action "):
        return reference.markdown_action(what.removeprefix("action ").strip())
    raise ValueError(f"unknown reference request {what!r}")


def on_page_markdown(markdown: str, **_: Any) -> str:
    return _MARK.sub(_expand, markdown)
