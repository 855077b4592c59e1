"""One token cache for every credential that is exchanged for a short-lived token: Suki's
login (suki_api.py) and OAuth2 token endpoints (oauth.py) alike.

A :class:`TokenCache` holds one credential's current token for the whole process: it
fetches one when there is none, when the current one is near its end (``max_margin``
before it, or half its lifetime for short-lived ones), and once when an API refused the
token it was given (``get(stale=...)``): eight threads meeting one expired token fetch
once, not eight times. How a token is fetched is the caller's ``fetch``, which returns the
token and its lifetime in seconds; the cache never sees the credential itself.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

Fetch = Callable[[], tuple[str, float]]
T = TypeVar("T")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what a header carries as it is


def usable(token: object) -> bool:
    """Whether ``token`` can travel in a header as given. A token endpoint's garbage (a
    line break, a space, a character beyond ASCII) is refused where it is issued, and so
    never cached: sent, it would fail every request for the token's lifetime, each as if
    for good."""
    return isinstance(token, str) and _TOKEN.fullmatch(token) is not None


class TokenCache:
    def __init__(self, fetch: Fetch, max_margin: float):
        self._fetch = fetch
        self.max_margin = max_margin
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0

    def get(self, stale: str | None = None) -> str:
        """The current token. ``stale``: the token an API just refused; a new one is
        fetched unless another thread already replaced it."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._refresh_at or (
                    stale is not None and stale == self._token):
                token, lifetime = self._fetch()
                lifetime = max(lifetime, 0.0)
                self._token = token
                self._refresh_at = time.monotonic() + lifetime - min(self.max_margin,
                                                                     lifetime / 2)
            return self._token


_SHARED: dict[Hashable, object] = {}
_SHARED_LOCK = threading.Lock()


def shared(key: Hashable, make: Callable[[], T]) -> T:
    """The process's one holder of tokens for ``key`` (a credential: token URL, client,
    scope ...), made by ``make`` the first time: every action and every reload that uses
    the same credential shares its tokens."""
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None:
            found = _SHARED[key] = make()
        return found  # type: ignore[return-value]
