"""Who is signed in to the console: passwords, signed session cookies, CSRF tokens, and
the slowing-down of repeated failed sign-ins.

Failed sign-ins are counted in the store (SharedThrottle), for every worker and node.
Sessions are stateless signed cookies, so every worker and every node accepts a session
that any of them issued, with nothing shared but the config. The signing key is
``console.session_secret`` when given, else derived (HMAC-SHA-256) from the receiver's
first webhook secret, which every node already shares; the cookie never reveals it. Each
user's sessions are signed with a key that also covers that user's password hash, so
changing a password (or removing the user) ends every session of theirs at once.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from werkzeug.security import check_password_hash, generate_password_hash

from suki_relay.config.console import ROLES, ConsoleSettings
from suki_relay.store import StoreUnavailable

if TYPE_CHECKING:
    from suki_relay.store import Store as SignInCounts

_DUMMY_HASH = generate_password_hash("not a password of anyone", method="scrypt")


def hash_password(password: str) -> str:
    """What `suki-relay console-password` prints: werkzeug's scrypt hash, salted."""
    return generate_password_hash(password, method="scrypt")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, message: str) -> str:
    return _b64(hmac.new(key, message.encode(), hashlib.sha256).digest())


@dataclass(frozen=True)
class Session:
    user: str
    expires: float
    nonce: str
    csrf: str  # the token every form of this session carries
    role: str = "admin"  # from console.users, read afresh with each config

    def may(self, role: str) -> bool:
        """Whether this session's role is ``role`` or above (viewer < operator < admin)."""
        return ROLES.index(self.role) >= ROLES.index(role)


class Keys:
    """Issues and checks session cookies and CSRF tokens for the configured users."""

    def __init__(self, settings: ConsoleSettings, receiver_secrets: tuple[str, ...]):
        base = settings.session_secret or (receiver_secrets[0] if receiver_secrets else "")
        if not base:
            raise ValueError("the console needs receiver.secrets or console.session_secret")
        self.master = hmac.new(base.encode(), b"suki-relay console sessions v1",
                               hashlib.sha256).digest()
        self.users = {name: user.hash for name, user in settings.users.items()}
        self.roles = {name: user.role for name, user in settings.users.items()}
        self.lifetime = settings.session_hours * 3600

    def _user_key(self, user: str) -> bytes:
        return hmac.new(self.master, f"user\0{user}\0{self.users[user]}".encode(),
                        hashlib.sha256).digest()

    # ------------------------------------------------------------ passwords

    def check_password(self, user: str, password: str) -> bool:
        """True for a configured user's password. An unknown name costs the same scrypt
        work as a known one, so timing does not tell which names exist."""
        hashed = self.users.get(user)
        ok = check_password_hash(hashed or _DUMMY_HASH, password)
        return ok and hashed is not None

    # ------------------------------------------------------------ sessions

    def issue(self, user: str, now: float | None = None) -> str:
        """A cookie value for a signed-in user."""
        body = _b64(json.dumps({"u": user, "e": int((now or time.time()) + self.lifetime),
                                "n": secrets.token_urlsafe(16)}).encode())
        return f"{body}.{_mac(self._user_key(user), 'session:' + body)}"

    def session(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie proves, or None (absent, forged, expired, user gone)."""
        if not cookie or cookie.count(".") != 1 or len(cookie) > 1024:
            return None
        body, mac = cookie.split(".")
        try:
            data = json.loads(_unb64(body))
            user, expires, nonce = str(data["u"]), float(data["e"]), str(data["n"])
        except (ValueError, KeyError, TypeError):
            return None
        if user not in self.users:
            return None
        key = self._user_key(user)
        if not hmac.compare_digest(mac.encode(), _mac(key, "session:" + body).encode()):
            return None
        if expires <= (now or time.time()):
            return None
        return Session(user, expires, nonce, _mac(key, "csrf:" + nonce), self.roles[user])

    # ------------------------------------------------------------ the sign-in form

    def login_csrf(self, nonce: str) -> str:
        """The sign-in form's CSRF token, bound to a random nonce in a cookie of its own
        (there is no session yet to bind it to)."""
        return _mac(self.master, "login:" + nonce)

    def check_login_csrf(self, nonce: str | None, token: str | None) -> bool:
        # bytes, not str: compare_digest raises TypeError on non-ASCII text (a 500)
        return bool(nonce and token) and hmac.compare_digest(
            str(token).encode(), self.login_csrf(str(nonce)).encode())


class Throttle:
    """Slows down guessing without holding a worker thread.

    A request is never made to wait (a sleep in a handler holds one of the worker's few
    threads, so an attacker with a handful of connections would stall the console and
    the webhook that shares those threads). Instead, after ``free`` failures in a row for
    a key, that key is refused outright, before any password hashing, for a time that
    doubles with each further failure up to ``longest`` seconds. The console keys one
    throttle by configured user name, one by other names (so being slowed down does not
    reveal which names exist) and one by client address; each remembers at most
    ``max_keys`` keys, the oldest forgotten first. A success clears its keys. These counts
    are this process's; :class:`SharedThrottle` keeps them in the store for every worker
    and node, and falls back on them while the store cannot be reached.
    """

    def __init__(self, free: int = 5, longest: float = 900.0, max_keys: int = 10000):
        self.free = free
        self.longest = longest
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> n, until

    def wait(self, keys: list[str], now: float | None = None) -> float:
        """Seconds before any of ``keys`` may try again (0: go ahead)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return max([self._failures.get(k, (0, 0.0))[1] - now for k in keys] + [0.0])

    def failed(self, keys: list[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for key in keys:
                n = self._failures.pop(key, (0, 0.0))[0] + 1
                delay = 0.0 if n < self.free else min(self.longest, 2.0 ** (n - self.free))
                self._failures[key] = (n, now + delay)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)

    def succeeded(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


class SharedThrottle:
    """A :class:`Throttle` whose counts are kept in the store, shared by every worker and
    node (as signed-out sessions are), so W workers on N nodes allow no more guesses than
    one. Keys are stored hashed (a user name field may hold a mistyped password). While
    the store cannot be reached, this process's own counts still apply."""

    def __init__(self, store: SignInCounts, name: str, free: int = 5, longest: float = 900.0):
        self.store = store
        self.name = name
        self.free = free
        self.longest = longest
        self.local = Throttle(free, longest)

    def _stored(self, keys: list[str]) -> list[str]:
        return [hashlib.sha256(f"{self.name}\0{k}".encode()).hexdigest() for k in keys]

    def wait(self, keys: list[str]) -> float:
        local = self.local.wait(keys)
        try:
            return max(local, self.store.sign_in_wait(self._stored(keys)))
        except StoreUnavailable:
            return local

    def failed(self, keys: list[str]) -> None:
        self.local.failed(keys)
        with contextlib.suppress(StoreUnavailable):  # counted in this process meanwhile
            self.store.sign_in_failed(self._stored(keys), self.free, self.longest)

    def succeeded(self, keys: list[str]) -> None:
        self.local.succeeded(keys)
        with contextlib.suppress(StoreUnavailable):
            self.store.sign_in_succeeded(self._stored(keys))
