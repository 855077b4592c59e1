"""The `console:` section of actions.yaml (off unless enabled), declared as data."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from suki_relay.options import setting

DEFAULT_PATH = "/console"
RESERVED_PATHS = ("/healthz", "/readyz")
_HASH = re.compile(r"(scrypt|pbkdf2)(:[A-Za-z0-9:]+)?\$[^$\s]+\$[0-9a-f]+")
_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")
_USER = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def _path(value: str) -> str | None:
    if _PATH.fullmatch(value) and value not in RESERVED_PATHS:
        return None
    return ("expected a path such as /console (letters, digits, ._~-; no trailing slash; "
            "not /healthz or /readyz)")


ROLES = ("viewer", "operator", "admin")  # each may do what the one before it may, and more


@dataclass(frozen=True)
class ConsoleUser:
    """One entry of ``console.users``: a bare hash (an admin, as before roles), or
    ``{hash: ..., role: viewer|operator|admin}``."""

    hash: str = field(repr=False)
    role: str = "admin"


def _users(value: dict[Any, Any]) -> str | None:
    for name, entry in value.items():
        if not isinstance(name, str) or not _USER.fullmatch(name):
            return f"user name {str(name)[:64]!r}: letters, digits and ._@- only, at most 64"
        if isinstance(entry, dict):
            unknown = sorted(str(k) for k in entry if k not in ("hash", "role"))
            if unknown:
                return f"user {name}: unknown key(s) {', '.join(unknown)}; expected hash, role"
            if entry.get("role", "admin") not in ROLES:
                return f"user {name}: role must be one of {', '.join(ROLES)}"
            hashed = entry.get("hash")
        else:
            hashed = entry
        if not isinstance(hashed, str) or not _HASH.fullmatch(hashed):
            return (f"user {name}: expected a password hash made by `suki-relay "
                    "console-password` (never a password)")
    return None


def _user(entry: Any) -> ConsoleUser:
    if isinstance(entry, dict):
        return ConsoleUser(str(entry["hash"]), str(entry.get("role", "admin")))
    return ConsoleUser(str(entry))


def _origin(value: str) -> str | None:
    parts = urlsplit(value)
    if not value or (parts.scheme in ("http", "https") and parts.hostname and
                     not parts.path.strip("/") and not parts.query and not parts.username
                     and value == f"{parts.scheme}://{parts.netloc}"):
        return None
    return ("expected the scheme and host browsers use, such as https://relay.example.org "
            "(no path, no trailing slash)")


def _secret(value: str) -> str | None:
    if value and len(value) < 32:
        return "expected at least 32 random characters (or leave it out to derive one)"
    return None


@dataclass(frozen=True)
class ConsoleSettings:
    enabled: bool = setting(False, help="serve the operator console")
    path: str = setting(DEFAULT_PATH, check=_path, help="where it is served")
    users: dict[str, ConsoleUser] = setting(
        kind=dict, default_factory=dict, secret=True, check=_users,
        help="user name: password hash (`suki-relay console-password`), or "
             "{hash: ..., role: viewer|operator|admin}",
        convert=lambda v: {str(k): _user(e) for k, e in v.items()})
    session_hours: float = setting(8.0, positive=True, max=24 * 30, help="how long a sign-in lasts")
    # signs session cookies; empty: derived from receiver.secrets (see console/auth.py)
    session_secret: str = setting("", secret=True, check=_secret,
                                  help="signs session cookies (32+ characters); "
                                       "default: derived from the webhook secret")
    # behind a reverse proxy: the origin browsers see (Origin check, Secure cookie) ...
    public_origin: str = setting("", check=_origin,
                                 help="e.g. https://relay.example.org, behind a reverse proxy")
    # ... and/or how many proxies' X-Forwarded-For/-Proto/-Host/-Port to believe
    trusted_proxies: int = setting(0, min=0, max=5,
                                   help="reverse proxies in front whose X-Forwarded-* "
                                        "headers are believed (0: none)")


def check(console: ConsoleSettings) -> str | None:
    """What is wrong with the section as a whole, or None."""
    if console.enabled and not console.users:
        return "the console is enabled but has no users"
    return None
