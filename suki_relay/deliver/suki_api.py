"""Suki's follow-up API: login, token cache, and fetching a link from a notification.

Credentials go to ``base_url`` and nowhere else: every href is joined to the base URL
and refused if the result names another scheme, host or port, or leaves its path (judged
on the decoded, normalised path; encoded dots, slashes and backslashes are refused
outright). Every call goes through :mod:`suki_relay.deliver.outbound`: one deadline for the whole
call, and a document is read whole up to :data:`MAX_DOCUMENT_BYTES` or not at all. Every
answer is parsed by :func:`suki_relay.protocol.parse_json` (bounded depth, ValueError).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import requests

from suki_relay.deliver import outbound
from suki_relay.deliver.tokens import TokenCache, usable
from suki_relay.errors import PermanentError, RetryableError
from suki_relay.options import setting
from suki_relay.protocol import parse_json

TOKEN_LIFETIME = 3600.0
REFRESH_MARGIN = 300.0  # refresh this long before the hour is up
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
"""The largest Suki document (after decompression) the relay reads: far above a note or
an hour of transcript; a larger one is a permanent failure rather than a worker's memory."""
_ENCODED_SEPARATOR = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def session_path(session_id: str, tail: str) -> str:
    """``/api/v1/ambient/session/{id}/{tail}``; refuses an id that is not a plain token
    (ids may come from payloads: one must not steer a request elsewhere on the API)."""
    if not SESSION_ID.fullmatch(session_id):
        raise PermanentError("not a session id")
    return f"/api/v1/ambient/session/{quote(session_id, safe='')}/{tail}"


def _http_url(value: str) -> str | None:
    if not re.match(r"https?://[^/]+", value):
        return "expected an http(s):// URL"
    return outbound.url_problem(value)  # a host name that can never resolve fails here


@dataclass(frozen=True)
class SukiSettings:
    """The top-level ``suki:`` section; actions see it as ``RelayContext.suki``."""

    base_url: str = setting(kind=str, required=True, check=_http_url,
                            help="e.g. https://sdp.suki.ai")
    partner_id: str = setting(kind=(str, int), required=True, convert=str,
                              help="your Suki partner id")
    partner_token: str = setting(kind=str, required=True, secret=True,
                                 help="your Suki partner token")
    provider_id: str | None = setting(None, kind=(str, int), convert=lambda v: str(v) or None,
                                      help="the provider id sent with API calls, if yours needs one")
    timeout_seconds: float = setting(20.0, positive=True, help="per request to Suki's API")


def safe_url(base_url: str, href: str) -> str:
    """``href`` joined to ``base_url``, or PermanentError if it would leave it.

    A path is appended to the base URL (Suki's hrefs are paths such as /api/v1/...); an
    absolute or protocol-relative href must name the base's own scheme, host and port.
    Either way the result must stay under the base URL's path, however a server decodes
    it: an encoded dot, slash or backslash (%2e, %2f, %5c, or the same encoded again) is
    refused, and the path is checked once decoded and normalised.
    """
    if not href or any(c in href for c in "\\\x00\r\n\t "):
        raise PermanentError("link href refused: empty or has control characters")
    decoded = href
    for _ in range(4):  # %252e is %2e once a server decodes it: look through every layer
        if _ENCODED_SEPARATOR.search(decoded):
            raise PermanentError("link href refused: it has an encoded dot, slash or backslash")
        decoded, previous = unquote(decoded), decoded
        if decoded == previous:
            break
    base = urlsplit(base_url)
    ref = urlsplit(href)
    if ref.scheme or ref.netloc or href.startswith("//"):
        joined = urlsplit(urljoin(base_url, href))
        if (joined.scheme, joined.hostname, joined.port) != (base.scheme, base.hostname,
                                                             base.port):
            raise PermanentError("link href refused: it names a host other than the Suki "
                                 "base URL")
    else:
        joined = urlsplit(base_url.rstrip("/") + "/" + href.lstrip("/"))
    base_path = base.path.rstrip("/") + "/"
    path = unquote(joined.path)
    if (".." in path.split("/") or any(c in path for c in "\\\x00")
            or not (posixpath.normpath(path) + "/").startswith(base_path)):
        raise PermanentError("link href refused: it leaves the Suki base URL's path")
    return joined.geturl()


def _accepted(resp: requests.Response, what: str, refused: str) -> None:
    """Suki answered 2xx with a whole body, or: 401/403 PermanentError(``refused``), other
    failures as outbound classifies them, a body cut off as require_whole says."""
    if resp.status_code in (401, 403):
        raise PermanentError(f"{refused} ({resp.status_code})", status=resp.status_code)
    outbound.raise_for_status(resp, what)
    outbound.require_whole(resp, what)


def _string_field(resp: requests.Response, key: str, what: str, refused: str) -> str:
    """A non-empty string field of Suki's JSON answer (see _accepted); no such field:
    RetryableError."""
    _accepted(resp, what, refused)
    try:
        value = parse_json(resp.content)[key]
    except (ValueError, KeyError, TypeError):
        value = None
    if not isinstance(value, str) or not value:
        raise RetryableError(f"{what} answered without a {key}")
    return value


class SukiClient:
    """One per process and settings (every action's ``fetch:`` shares it): caches the
    token across deliveries and threads. Each thread has its own HTTP session (a requests
    session is not meant to be shared between threads)."""

    def __init__(self, settings: SukiSettings):
        self.settings = settings
        self._sessions = outbound.Sessions()
        self._tokens = TokenCache(self._login, REFRESH_MARGIN)

    def _login(self) -> tuple[str, float]:
        s = self.settings
        body: dict[str, Any] = {"partner_id": s.partner_id, "partner_token": s.partner_token}
        if s.provider_id:
            body["provider_id"] = s.provider_id
        url = s.base_url.rstrip("/") + "/api/v1/auth/login"
        resp = outbound.send(self._sessions.get(), "POST", url, json=body, timeout=s.timeout_seconds,
                             what="Suki login")
        token = _string_field(resp, "suki_token", "Suki login",
                              "Suki login refused the partner credentials")
        if not usable(token):
            raise RetryableError("Suki login answered without a usable suki_token")
        return token, TOKEN_LIFETIME

    def token(self, stale: str | None = None) -> str:
        """The cached token, logging in when there is none or it is near its hour.
        ``stale``: a token Suki just refused; replaced unless another thread already did
        (eight threads meeting one expired token log in once, not eight times)."""
        return self._tokens.get(stale)

    def _get(self, href: str) -> requests.Response:
        """GET a path on the base URL with the token; one re-login on 401. The body is
        read up to MAX_DOCUMENT_BYTES within the deadline (see ``get``)."""
        url = safe_url(self.settings.base_url, href)
        stale: str | None = None
        for _ in range(2):
            token = self.token(stale=stale)
            headers = {"sdp_suki_token": token, "Accept": "application/json"}
            resp = outbound.send(self._sessions.get(), "GET", url, headers=headers,
                                 timeout=self.settings.timeout_seconds, what="Suki API",
                                 max_reply_bytes=MAX_DOCUMENT_BYTES)
            if resp.status_code != 401:
                break
            stale = token
        return resp

    def session_status(self, session_id: str) -> str | None:
        """What Suki's API says of a session (protocol.SESSION_STATUSES, or another string
        Suki may add), or None if Suki does not know the session (404). Raises
        RetryableError/PermanentError when Suki could not be asked."""
        resp = self._get(session_path(session_id, "status"))
        if resp.status_code == 404:
            return None
        status = _string_field(resp, "status", "Suki API", "Suki refused the credentials")
        return status.strip().lower()[:40]

    def get(self, href: str) -> requests.Response:
        """GET a link from a notification, with the token; one re-login on 401. The
        document in ``resp.content`` is whole (else RetryableError, or PermanentError when
        it is larger than MAX_DOCUMENT_BYTES)."""
        resp = self._get(href)
        if resp.status_code in (404, 409):
            raise RetryableError(f"Suki answered {resp.status_code}: content not ready yet",
                                 status=resp.status_code)
        _accepted(resp, "Suki API", "Suki refused the credentials")
        return resp
