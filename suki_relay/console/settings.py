"""The `console:` section of actions.yaml (off unless enabled)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PATH = "/console"
RESERVED_PATHS = ("/healthz", "/readyz")
_HASH = re.compile(r"(scrypt|pbkdf2)(:[A-Za-z0-9:]+)?\$[^$\s]+\$[0-9a-f]+")
_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")


@dataclass(frozen=True)
class ConsoleSettings:
    enabled: bool = False
    path: str = DEFAULT_PATH
    users: dict[str, str] = field(default_factory=dict, repr=False)  # name -> password hash
    session_hours: float = 8.0
    # signs session cookies; empty: derived from receiver.secrets (see console/auth.py)
    session_secret: str = field(default="", repr=False)


def check(raw: Any) -> tuple[ConsoleSettings, list[tuple[str, str]]]:
    """The settings, and (option, message) for each problem found."""
    problems: list[tuple[str, str]] = []
    if raw is None:
        return ConsoleSettings(), problems
    if not isinstance(raw, dict):
        return ConsoleSettings(), [("console", "expected a mapping")]
    known = ConsoleSettings.__dataclass_fields__
    for key in raw:
        if key not in known:
            problems.append((f"console.{key}",
                             f"unknown option; expected one of: {', '.join(known)}"))
    enabled = raw.get("enabled", False)
    if not isinstance(enabled, bool):
        problems.append(("console.enabled", "expected true or false"))
        enabled = False
    path = raw.get("path", DEFAULT_PATH)
    if not isinstance(path, str) or not _PATH.fullmatch(path) or path in RESERVED_PATHS:
        problems.append(("console.path", "expected a path such as /console (letters, digits, "
                                         "._~-; no trailing slash; not /healthz or /readyz)"))
        path = DEFAULT_PATH
    hours = raw.get("session_hours", 8.0)
    if isinstance(hours, bool) or not isinstance(hours, int | float) or not 0 < hours <= 24 * 30:
        problems.append(("console.session_hours", "expected a number of hours, more than 0 "
                                                  "and at most 720"))
        hours = 8.0
    users = raw.get("users") or {}
    if not isinstance(users, dict):
        problems.append(("console.users", "expected a mapping of user name to password hash "
                                          "(made by `suki-relay console-password`)"))
        users = {}
    for name, hashed in users.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._@-]{1,64}", name):
            problems.append(("console.users", f"user name {str(name)[:64]!r}: letters, digits "
                                              "and ._@- only, at most 64"))
        if not isinstance(hashed, str) or not _HASH.fullmatch(hashed):
            problems.append((f"console.users.{name}", "expected a password hash made by "
                                                      "`suki-relay console-password` (never a "
                                                      "password)"))
    if enabled and not users:
        problems.append(("console.users", "the console is enabled but has no users"))
    secret = raw.get("session_secret", "")
    if not isinstance(secret, str) or (secret and len(secret) < 32):
        problems.append(("console.session_secret", "expected at least 32 random characters "
                                                   "(or leave it out to derive one)"))
        secret = ""
    return ConsoleSettings(enabled, path, {str(k): str(v) for k, v in users.items()},
                           float(hours), secret), problems
