"""Credentials for an outbound API: a fixed bearer token, or OAuth2 client credentials.

Client-credentials tokens are kept by the token cache (tokens.py: one per token URL,
client and scope, shared by every action and every reload that uses them), refreshed
shortly before they expire, and once when the API answers 401
(:meth:`Tokens.authorization` with ``stale=``). The client secret is sent to
``token_url`` and nowhere else; the token only where the caller sends it. Neither ever
appears in an error message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

from suki_relay.deliver import outbound
from suki_relay.deliver.tokens import TokenCache, shared
from suki_relay.errors import PermanentError, RetryableError

DEFAULT_LIFETIME = 3600.0  # when the token endpoint does not say (expires_in is optional)
MAX_MARGIN = 60.0  # refresh this long before expiry (half the lifetime for short ones)
# RFC 6749 5.2: only these are repeated from the token endpoint's answer (never free text)
ERROR_CODES = frozenset(("invalid_request", "invalid_client", "invalid_grant",
                         "unauthorized_client", "unsupported_grant_type", "invalid_scope"))
CLIENT_KEYS = ("token_url", "client_id", "client_secret", "scope", "client_auth")


@dataclass(frozen=True)
class ClientCredentials:
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None
    client_auth: str = "basic"  # client_secret_basic (RFC 6749 2.3.1); or "post": in the body
    timeout_seconds: float = 20.0


def auth_problems(auth: Any) -> list[str]:
    """What is wrong with an ``auth:`` mapping ({bearer} or client credentials)."""
    if not isinstance(auth, dict):
        return ["auth: expected {bearer: TOKEN} or {token_url, client_id, client_secret, scope}"]
    if "bearer" in auth:
        extra = sorted(str(k) for k in auth if k != "bearer")
        if extra:
            return [f"auth: bearer takes no other keys (got {', '.join(extra)})"]
        if not isinstance(auth["bearer"], str) or not auth["bearer"]:
            return ["auth.bearer: expected a non-empty token"]
        return []
    problems = [f"auth.{k}: unknown key; expected bearer, or {', '.join(CLIENT_KEYS)}"
                for k in auth if k not in CLIENT_KEYS]
    for key in ("token_url", "client_id", "client_secret"):
        if not isinstance(auth.get(key), str) or not auth[key]:
            problems.append(f"auth.{key}: required for OAuth2 client credentials (or give "
                            "auth.bearer)")
    url = auth.get("token_url")
    if isinstance(url, str) and url and not url.startswith(("http://", "https://")):
        problems.append("auth.token_url: expected an http:// or https:// URL")
    if auth.get("scope") is not None and not isinstance(auth["scope"], str):
        problems.append("auth.scope: expected a string (space-separated scopes)")
    if auth.get("client_auth", "basic") not in ("basic", "post"):
        problems.append("auth.client_auth: expected basic or post")
    return problems


class Bearer:
    """A fixed token from the config."""

    refreshable = False

    def __init__(self, token: str):
        self._token = token

    def authorization(self, stale: str | None = None) -> str:
        return f"Bearer {self._token}"


class Tokens:
    """OAuth2 client-credentials tokens for one client, shared by the whole process."""

    refreshable = True

    def __init__(self, client: ClientCredentials):
        self.client = client
        self._session = outbound.new_session()
        self._cache = TokenCache(self._request, MAX_MARGIN)

    def authorization(self, stale: str | None = None) -> str:
        """The Authorization header value. ``stale``: the value the API just refused with a
        401; a new token is fetched unless another thread already replaced it."""
        return self._cache.get(stale)

    def _request(self) -> tuple[str, float]:
        c = self.client
        form = {"grant_type": "client_credentials"}
        if c.scope:
            form["scope"] = c.scope
        kwargs: dict[str, Any] = {}
        if c.client_auth == "post":
            form.update(client_id=c.client_id, client_secret=c.client_secret)
        else:  # RFC 6749 2.3.1: each form-encoded before Basic (a "+" in a secret is a space)
            kwargs["auth"] = (quote_plus(c.client_id), quote_plus(c.client_secret))
        resp = outbound.send(self._session, "POST", c.token_url, data=form,
                             headers={"Accept": "application/json"}, timeout=c.timeout_seconds,
                             what="OAuth2 token endpoint", **kwargs)
        if resp.status_code in (400, 401, 403):
            raise PermanentError(f"OAuth2 token endpoint refused the client credentials "
                                 f"({resp.status_code}{_error_code(resp)})", status=resp.status_code)
        outbound.raise_for_status(resp, "OAuth2 token endpoint")
        try:
            answer = resp.json()
            token, token_type = answer["access_token"], answer.get("token_type", "Bearer")
            lifetime = float(answer.get("expires_in") or DEFAULT_LIFETIME)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RetryableError("OAuth2 token endpoint answered without an access_token") from None
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
            raise RetryableError("OAuth2 token endpoint answered without a usable access_token")
        if str(token_type).lower() != "bearer":
            raise PermanentError("OAuth2 token endpoint issued a token that is not a bearer token")
        return f"Bearer {token}", max(lifetime, 0.0)


def _error_code(resp: Any) -> str:
    try:
        code = resp.json().get("error")
    except (ValueError, AttributeError):
        return ""
    return f" {code}" if isinstance(code, str) and code in ERROR_CODES else ""


def credentials(auth: dict[str, Any] | None, timeout_seconds: float = 20.0
                ) -> Bearer | Tokens | None:
    """What an action authenticates with, from a validated ``auth:`` mapping."""
    if not auth:
        return None
    if "bearer" in auth:
        return Bearer(auth["bearer"])
    client = ClientCredentials(auth["token_url"], auth["client_id"], auth["client_secret"],
                               auth.get("scope"), auth.get("client_auth", "basic"),
                               timeout_seconds)
    return shared(client, lambda: Tokens(client))
