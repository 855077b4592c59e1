"""Suki's side of the protocol: its request signature, HMAC-SHA-256 over
``generated-at + ":" + raw body`` in hex, and the statuses its documentation names.

Pure functions with no I/O, shared by the receiver (verify), ``suki-relay send`` and the
``http`` action's ``sign_secret`` (sign); and :func:`parse_json`, the one parser for what
Suki's API, FHIR servers and OAuth2 token endpoints answer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from typing import Any

# the statuses, named once: a notification's (what Suki documents; timeout and cancelled
# are not), and a session's as Suki's API answers GET .../session/{id}/status
SUCCESS, FAILURE = "success", "failure"
DOCUMENTED_STATUSES = (SUCCESS, FAILURE)
UNFINISHED_SESSION_STATUSES = ("created", "ready", "running", "paused")
FINISHED_SESSION_STATUSES = ("aborted", "skipped", "failed", "completed")
SESSION_STATUSES = UNFINISHED_SESSION_STATUSES + FINISHED_SESSION_STATUSES
MAX_JSON_DEPTH = 100
"""The deepest nesting of objects and arrays taken from Suki's API: far beyond any document
Suki sends, and far from the interpreter's recursion limit (templates, ``tojson`` and FHIR
rendering all recurse through what was parsed)."""


def signature(secret: str, generated_at: str, body: bytes) -> str:
    message = generated_at.encode("ascii") + b":" + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signed_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The two headers Suki sends, for a body signed now."""
    generated_at = str(int((time.time() if now is None else now) * 1000))
    return {
        "Content-Type": "application/json",
        "generated-at": generated_at,
        "X-API-Key": signature(secret, generated_at, body),
    }


def stable_time(anchor: float, window: float, now: float | None = None) -> float:
    """A signing time for retries of one delivery: ``anchor`` (when the event was
    received) moved forward in whole ``window`` steps to the last step not after now.

    Every retry within one window signs with the same ``generated-at``, so it carries the
    same signature and a downstream relay de-duplicates it; a retry after a long outage
    still signs with a time less than ``window`` old, so a receiver whose tolerance is
    longer than ``window`` does not refuse it as expired. Pure: no state to keep.
    """
    now = time.time() if now is None else now
    return anchor + max(0, int((now - anchor) // window)) * window


def matches(secrets: list[str], generated_at: str, body: bytes, given: str) -> bool:
    """True if any secret signs the request to ``given`` (hex, either case).

    Every secret is tried, so the time taken does not tell which one (if any) matched.
    """
    given_bytes = given.lower().encode("ascii", "replace")
    ok = False
    for secret in secrets:
        expected = signature(secret, generated_at, body).encode("ascii")
        ok |= hmac.compare_digest(expected, given_bytes)
    return ok


def parse_json(data: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A JSON document, or ValueError: not JSON, not UTF-8, NaN or Infinity (not JSON
    either, nor is a number too large for a float, such as 1e999), or nested deeper than
    ``max_depth``. Never RecursionError, however deep. The messages quote nothing of
    ``data``."""
    try:
        value = json.loads(data, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError:  # its message quotes a byte
        raise ValueError("JSON that is not UTF-8 text") from None
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:  # no recursion: a document at the limit costs one pass, not the stack
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > max_depth:
            raise ValueError(f"JSON nested deeper than {max_depth}")
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return value


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("a number too large for a float")
    return number
