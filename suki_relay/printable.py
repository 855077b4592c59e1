"""Payload text made safe to print: in log lines and in terminal tables.

A status or id comes from a signed but otherwise arbitrary payload. Printed as it is, a
newline in it starts a forged log line (text format), and an escape sequence drives the
operator's terminal. Control characters (C0, DEL, C1), lone surrogates, Unicode line
separators and bidirectional overrides are written as escapes, and long values are cut.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
LIMIT = 200


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(value: object, limit: int | None = LIMIT, keep_newlines: bool = False) -> str:
    """``value`` as text with nothing a log reader or a terminal would act on; at most
    ``limit`` characters of it (then an ellipsis). ``keep_newlines`` keeps \\n and \\t,
    for multi-line text the user asked to see (a payload)."""
    text = value if isinstance(value, str) else str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "\u2026"
    if _UNSAFE.search(text) is None:
        return text
    if keep_newlines:
        return _UNSAFE.sub(lambda m: m.group() if m.group() in "\n\t" else _escape(m), text)
    return _UNSAFE.sub(_escape, text)
