"""Credentials for an outbound API: a fixed bearer token, OAuth2 client credentials with a
client secret, or (SMART Backend Services) with a signed JWT client assertion (smart.py).

Client-credentials tokens are kept by the token cache (tokens.py: one per token URL,
client and scope, shared by every action and every reload that uses them), refreshed
shortly before they expire, and once when the API answers 401
(:meth:`Tokens.authorization` with ``stale=``). The client secret is sent to
``token_url`` and nowhere else; the token only where the caller sends it. Neither ever
appears in an error message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from suki_relay.deliver import outbound, smart
from suki_relay.deliver.tokens import TokenCache, shared, usable
from suki_relay.errors import PermanentError, RetryableError
from suki_relay.protocol import parse_json

DEFAULT_LIFETIME = 3600.0  # when the token endpoint does not say (expires_in is optional)
MAX_MARGIN = 60.0  # refresh this long before expiry (half the lifetime for short ones)
# RFC 6749 5.2: only these are repeated from the token endpoint's answer (never free text)
ERROR_CODES = frozenset(("invalid_request", "invalid_client", "invalid_grant",
                         "unauthorized_client", "unsupported_grant_type", "invalid_scope"))
CLIENT_KEYS = ("token_url", "client_id", "client_secret", "scope", "client_auth")
# SMART Backend Services: the first key file signs, all are published (rotation)
JWT_KEYS = ("token_url", "client_id", "private_key_file", "kid", "alg", "scope", "jku")


@dataclass(frozen=True)
class ClientCredentials:
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None
    client_auth: str = "basic"  # client_secret_basic (RFC 6749 2.3.1); or "post": in the body
    timeout_seconds: float = 20.0

    def token_form(self) -> tuple[dict[str, str], dict[str, Any]]:
        """The token request's form fields and the request's other arguments."""
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        kwargs: dict[str, Any] = {}
        if self.client_auth == "post":
            form.update(client_id=self.client_id, client_secret=self.client_secret)
        else:  # RFC 6749 2.3.1: each form-encoded before Basic (a "+" in a secret is a space)
            kwargs["auth"] = (quote_plus(self.client_id), quote_plus(self.client_secret))
        return form, kwargs


@dataclass(frozen=True)
class JwtClient:
    """SMART Backend Services: client_credentials with a signed client assertion. Holds
    the key files' paths; the keys themselves are loaded by :class:`Tokens`."""

    token_url: str
    client_id: str
    key_files: tuple[str, ...]  # absolute; the first signs
    scope: str | None = None
    kid: str | None = None  # the signing key's id (default: its RFC 7638 thumbprint)
    alg: str | None = None  # RS384 or ES384; checked against the key
    jku: str | None = None  # the JWK Set URL registered with the EHR, put in the header
    timeout_seconds: float = 20.0

    def keys(self) -> list[smart.SigningKey]:
        """Every key, the signing one first (KeyProblem if one cannot be used)."""
        return [smart.load_key(Path(f), self.alg if i == 0 else None,
                               self.kid if i == 0 else None)
                for i, f in enumerate(self.key_files)]

    def token_form(self, key: smart.SigningKey | None = None) -> tuple[dict[str, str], dict[str, Any]]:
        if key is None:
            key = self.keys()[0]
        form = {"grant_type": "client_credentials",
                "client_assertion_type": smart.ASSERTION_TYPE,
                "client_assertion": smart.assertion(key, self.client_id, self.token_url,
                                                    self.jku)}
        if self.scope:
            form["scope"] = self.scope
        return form, {}


def auth_problems(auth: Any) -> list[str]:
    """What is wrong with an ``auth:`` mapping ({bearer} or client credentials)."""
    if not isinstance(auth, dict):
        return ["auth: expected {bearer: TOKEN}, {token_url, client_id, client_secret, scope} "
                "or {token_url, client_id, private_key_file, alg, kid, scope}"]
    if "private_key_file" in auth:
        return _jwt_problems(auth)
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


def _jwt_problems(auth: dict[str, Any]) -> list[str]:
    problems = [f"auth.{k}: unknown key with private_key_file; expected {', '.join(JWT_KEYS)}"
                for k in auth if k not in JWT_KEYS]
    for key in ("token_url", "client_id"):
        if not isinstance(auth.get(key), str) or not auth[key]:
            problems.append(f"auth.{key}: required for SMART Backend Services")
    files = auth.get("private_key_file")
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list) or not files or not all(isinstance(f, str) and f
                                                           for f in files):
        problems.append("auth.private_key_file: expected a file name, or a list of them (the "
                        "first signs, all are published)")
    for key in ("token_url", "jku"):
        url = auth.get(key)
        if isinstance(url, str) and url and not url.startswith(("http://", "https://")):
            problems.append(f"auth.{key}: expected an http:// or https:// URL")
    if auth.get("alg") is not None and auth["alg"] not in smart.ALGORITHMS:
        problems.append(f"auth.alg: expected one of {', '.join(smart.ALGORITHMS)}")
    for key in ("kid", "scope", "jku"):
        if auth.get(key) is not None and not isinstance(auth[key], str):
            problems.append(f"auth.{key}: expected a string")
    return problems


def key_files(auth: dict[str, Any], base_dir: Path | None) -> tuple[str, ...]:
    """``private_key_file`` (one or a list) as absolute paths (relative: to base_dir)."""
    files = auth["private_key_file"]
    files = [files] if isinstance(files, str) else list(files)
    return tuple(str(p if p.is_absolute() else (base_dir or Path.cwd()) / p)
                 for p in (Path(f).expanduser() for f in files))


def key_problems(auth: dict[str, Any], base_dir: Path | None) -> list[str]:
    """What is wrong with the key files (check time): unreadable, not a key, the wrong
    kind for ``alg``, readable by others."""
    problems = []
    for i, f in enumerate(key_files(auth, base_dir)):
        try:
            smart.load_key(Path(f), auth.get("alg") if i == 0 else None)
        except smart.KeyProblem as exc:
            problems.append(f"auth.private_key_file: {exc}")
            continue
        if smart.loose_permissions(Path(f)):
            problems.append(f"auth.private_key_file: {f}: readable by others than its owner "
                            "(chmod 600)")
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

    def __init__(self, client: ClientCredentials | JwtClient):
        self.client = client
        self._session = outbound.new_session()
        self._cache = TokenCache(self._request, MAX_MARGIN)
        self._keys: list[smart.SigningKey] | None = None
        self.granted_scope: str | None = None  # the scope the last token response granted

    def public_keys(self) -> list[smart.SigningKey]:
        """A JWT client's keys, loaded once (KeyProblem if one cannot be used)."""
        if not isinstance(self.client, JwtClient):
            return []
        if self._keys is None:
            self._keys = self.client.keys()
        return self._keys

    def authorization(self, stale: str | None = None) -> str:
        """The Authorization header value. ``stale``: the value the API just refused with a
        401; a new token is fetched unless another thread already replaced it."""
        return self._cache.get(stale)

    def _request(self) -> tuple[str, float]:
        c = self.client
        if isinstance(c, JwtClient):
            try:
                form, kwargs = c.token_form(self.public_keys()[0])
            except smart.KeyProblem as exc:
                raise PermanentError(f"the client's private key cannot be used: {exc}") from None
        else:
            form, kwargs = c.token_form()
        resp = outbound.send(self._session, "POST", c.token_url, data=form,
                             headers={"Accept": "application/json"}, timeout=c.timeout_seconds,
                             what="OAuth2 token endpoint", **kwargs)
        if resp.status_code in (400, 401, 403):
            raise PermanentError(f"OAuth2 token endpoint refused the client credentials "
                                 f"({resp.status_code}{_error_code(resp)})", status=resp.status_code)
        outbound.raise_for_status(resp, "OAuth2 token endpoint")
        outbound.require_whole(resp, "OAuth2 token endpoint")
        try:
            answer = parse_json(resp.content)
        except ValueError:  # its message may quote a byte of the answer: not repeated
            raise RetryableError("OAuth2 token endpoint answered with a body that is not JSON "
                                 "(or is nested too deeply)") from None
        try:
            token, token_type = answer["access_token"], answer.get("token_type", "Bearer")
            lifetime = float(answer.get("expires_in") or DEFAULT_LIFETIME)
            granted = answer.get("scope")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RetryableError("OAuth2 token endpoint answered without an access_token") from None
        if not usable(token):
            raise RetryableError("OAuth2 token endpoint answered without a usable access_token")
        if not math.isfinite(lifetime):  # "NaN" or "1e999" as a string: never refreshed
            raise RetryableError("OAuth2 token endpoint answered with an expires_in that is "
                                 "not a number of seconds")
        if str(token_type).lower() != "bearer":
            raise PermanentError("OAuth2 token endpoint issued a token that is not a bearer token")
        self.granted_scope = granted if isinstance(granted, str) else None
        return f"Bearer {token}", max(lifetime, 0.0)


def _error_code(resp: Any) -> str:
    try:
        code = parse_json(resp.content).get("error")
    except (ValueError, AttributeError):
        return ""
    return f" {code}" if isinstance(code, str) and code in ERROR_CODES else ""


def credentials(auth: dict[str, Any] | None, timeout_seconds: float = 20.0,
                base_dir: Path | None = None) -> Bearer | Tokens | None:
    """What an action authenticates with, from a validated ``auth:`` mapping (key files
    relative to ``base_dir``)."""
    if not auth:
        return None
    if "bearer" in auth:
        return Bearer(auth["bearer"])
    client: ClientCredentials | JwtClient
    if "private_key_file" in auth:
        client = JwtClient(auth["token_url"], auth["client_id"], key_files(auth, base_dir),
                           auth.get("scope"), auth.get("kid"), auth.get("alg"), auth.get("jku"),
                           timeout_seconds)
    else:
        client = ClientCredentials(auth["token_url"], auth["client_id"], auth["client_secret"],
                                   auth.get("scope"), auth.get("client_auth", "basic"),
                                   timeout_seconds)
    return shared(client, lambda: Tokens(client))
