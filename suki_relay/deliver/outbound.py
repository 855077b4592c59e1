"""Outbound HTTP for actions: one place that turns what happened into retry or give up,
and that bounds what a target can cost us.

Retryable: connection errors, timeouts, 408, 429 and 5xx (honouring Retry-After); a
request that never left (no connection could be made) is :class:`NotSent`, a
RetryableError that says the target cannot have it.
Permanent: every other non-2xx, redirects included (they are not followed, so a
credential never travels to a host the config did not name). Messages carry the status
and never the URL, which may itself be a secret (a Slack webhook URL is), nor anything
from the reply body beyond what a caller picks out on purpose.

Every request made through :func:`send` has one deadline for the whole exchange (connect,
send, status line, headers, body): a target that drips bytes forever is cut off when it
passes, however steadily it drips, because a watchdog thread shuts the connection's socket
down. The reply body is read after decompression up to a bound (:data:`MAX_REPLY_BYTES`
for targets; callers such as the Suki client ask for more), so neither a huge reply nor a
small gzip bomb is ever held in memory. A reply cut off by either limit is marked on the
response (``cut_off``); :func:`raise_for_status` still decides by the status line, and
:func:`require_whole` refuses it where the body itself is the point.
"""

from __future__ import annotations

import email.utils
import os
import threading
import time
import urllib.request
import zlib
from typing import Any

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
import urllib3.util

from suki_relay import tracing
from suki_relay.deliver import deadline
from suki_relay.errors import PermanentError, RetryableError


class NotSent(RetryableError):
    """The request never left: no connection to the target could be made (refused,
    unreachable, no name, no connection within the deadline), or, for a caller that
    raises it, no credentials to send it with. The target cannot have it, so an action
    that must not act twice may simply try again."""


MAX_REPLY_BYTES = 1024 * 1024
"""The most reply bytes (after decompression) kept from a target: plenty for a status
document or an error, far from what could hurt a worker."""

_CHUNK = 64 * 1024
_BAD_HOST = "the URL's host name is not a valid (IDNA) host name"

# ---------------------------------------------------------------- sessions


def new_session() -> requests.Session:
    """A requests session that reads the environment once, not on every request (those
    lookups cost more than a local POST, and include reading ~/.netrc, whose credentials
    must never reach a target). A CA bundle from REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE is
    used as requests would. When a proxy is configured, requests' own handling of the
    environment is kept whole (NO_PROXY, and ~/.netrc with it). Requests made with it
    through :func:`send` get the deadline and the reply bound."""
    session = requests.Session()
    session.trust_env = bool(urllib.request.getproxies())
    if not session.trust_env:
        session.verify = (os.environ.get("REQUESTS_CA_BUNDLE")
                          or os.environ.get("CURL_CA_BUNDLE") or True)
    deadline.ensure_adapter(session)
    return session


class Sessions:
    """One session per thread (connections are reused; a session is not shared between
    threads)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = new_session()
        return session


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait, from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def url_problem(url: str) -> str | None:
    """Why ``url`` can never be requested (the same judgement :func:`send` makes, for
    check time), or None. Says nothing of the URL itself, which may be a secret."""
    try:
        prepared = requests.Request("GET", url).prepare()
        parsed = urllib3.util.parse_url(prepared.url or "")
        host = parsed.host or ""
        if parsed.scheme not in ("http", "https"):
            return "expected an http:// or https:// URL"
        if not host:
            return "the URL has no host name"
        if not host.startswith("["):
            host.encode("idna")  # what the socket layer does; labels of 1 to 63 characters
    except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
        return "expected an http:// or https:// URL"
    except (requests.RequestException, ValueError, UnicodeError):
        return _BAD_HOST
    return None


# ---------------------------------------------------------------- one request


def send(session: requests.Session, method: str, url: str, *, what: str, timeout: float,
         delivery: Any = None, max_reply_bytes: int = MAX_REPLY_BYTES,
         **kwargs: Any) -> requests.Response:
    """Make one request, all of it within ``timeout`` seconds, keeping at most
    ``max_reply_bytes`` of the decompressed reply body as ``resp.content``. With
    ``delivery``, the answer's HTTP status is recorded on it (shown with the attempt by
    `suki-relay show`).

    No status line and headers within the deadline: RetryableError. A body cut off by the
    deadline or the bound leaves ``resp.cut_off`` set ("deadline" or "size"; None when
    the body is whole): the status line was answered, so the caller decides (see
    :func:`require_whole`). Other transport failures become RetryableError, a request that
    cannot be made at all PermanentError.
    """
    deadline.ensure_adapter(session)
    headers = dict(kwargs.pop("headers", None) or {})
    if not any(k.lower() == "accept-encoding" for k in headers):
        headers["Accept-Encoding"] = "gzip, deflate"
    if tracing.ON:  # within a delivery attempt: the target may join the event's trace
        tracing.inject(headers)
    with deadline.bounded(timeout) as attempt:
        deadline.current.attempt = attempt
        try:
            resp = session.request(method, url, timeout=timeout, allow_redirects=False,
                                   stream=True, headers=headers, **kwargs)
        except (requests.Timeout, requests.ConnectionError) as exc:
            if _not_connected(exc):
                raise NotSent(f"{what}: connection failed before the request was sent") \
                    from None
            if attempt.expired or time.monotonic() >= attempt.deadline:
                raise RetryableError(f"{what}: no answer within {timeout:g}s") from None
            raise RetryableError(f"{what}: connection failed") from None
        except requests.RequestException as exc:
            raise PermanentError(f"{what}: request could not be made "
                                 f"({type(exc).__name__})") from None
        except UnicodeEncodeError as exc:  # http.client writes header values as Latin-1
            if exc.encoding not in ("latin-1", "iso-8859-1"):
                raise PermanentError(f"{what}: {_BAD_HOST}") from None
            raise PermanentError(f"{what}: a header value holds a character beyond Latin-1, "
                                 "which HTTP headers cannot carry") from None
        except (urllib3.exceptions.LocationParseError, UnicodeError):
            raise PermanentError(f"{what}: {_BAD_HOST}") from None
        finally:
            deadline.current.attempt = None
        if attempt.expired:  # cut off before the headers were done (a cut reads as their end)
            resp.raw.close()
            raise RetryableError(f"{what}: no answer within {timeout:g}s")
        if delivery is not None:
            delivery.http_status = resp.status_code
        _read_bounded(resp, attempt, max_reply_bytes)
        return resp


def _not_connected(exc: requests.RequestException) -> bool:
    """Whether no connection was made for the request (so nothing of it was sent): a new
    connection refused, unreachable, unresolvable or not made in time. A reused
    connection that fails, or one lost after it was made, is not this."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    return isinstance(reason, urllib3.exceptions.NewConnectionError) and \
        not isinstance(exc, requests.exceptions.ProxyError)


def _read_bounded(resp: requests.Response, attempt: deadline.Attempt, limit: int) -> None:
    """Read the body into ``resp.content``: decoded, at most ``limit`` bytes, before the
    deadline. Sets ``resp.cut_off``: None (whole), "deadline", "size", "connection" (the
    target hung up mid-body) or "encoding" (one we did not ask for, or corrupt)."""
    raw = resp.raw
    decoder = _decoder(resp.headers.get("Content-Encoding", ""))
    parts: list[bytes] = []
    size = 0
    cut_off: str | None = None if decoder is not None else "encoding"
    try:
        while cut_off is None and decoder is not None:
            try:
                chunk = raw.read(_CHUNK, decode_content=False)
            except Exception:
                cut_off = "deadline" if attempt.expired else "connection"
                break
            if not chunk:
                break
            try:
                data = decoder.feed(chunk, limit - size + 1)
            except zlib.error:
                cut_off = "encoding"
                break
            parts.append(data)
            size += len(data)
            if size > limit:
                cut_off = "size"
            elif attempt.expired:
                cut_off = "deadline"
    finally:
        with attempt.lock:
            attempt.done = True  # from here the watchdog leaves the connection alone
            reusable = cut_off is None and not attempt.expired
        if reusable:
            raw.release_conn()
        else:
            raw.close()  # the rest of the body is never read: the connection is done
    resp._content = b"".join(parts)[:limit]  # type: ignore[attr-defined]  # read by .content
    resp._content_consumed = True  # type: ignore[attr-defined]
    resp.cut_off = cut_off  # type: ignore[attr-defined]


class _Decoder:
    """zlib inflating at most ``room`` bytes per call, so a small gzip bomb never grows
    past what we keep. Each call either consumes all its input or fills ``room`` (and the
    caller, over its bound, stops). "deflate" is zlib-wrapped by the standard and raw in
    the wild: both are accepted."""

    def __init__(self, wbits: int):
        self._wbits = wbits
        self._z = zlib.decompressobj(wbits)
        self._started = False

    def feed(self, data: bytes, room: int) -> bytes:
        try:
            out = self._z.decompress(data, room)
        except zlib.error:
            if self._started or self._wbits != zlib.MAX_WBITS:
                raise
            self._wbits = -zlib.MAX_WBITS  # raw deflate, no zlib header
            self._z = zlib.decompressobj(self._wbits)
            out = self._z.decompress(data, room)
        self._started = True
        return out


class _Identity:
    def feed(self, data: bytes, room: int) -> bytes:
        return data


def _decoder(encoding: str) -> _Decoder | _Identity | None:
    """The decoder for a Content-Encoding we asked for; None for any other (we never ask
    for brotli or zstd, nor for stacked encodings)."""
    value = encoding.strip().lower()
    if value in ("", "identity"):
        return _Identity()
    if value in ("gzip", "x-gzip"):
        return _Decoder(16 + zlib.MAX_WBITS)
    if value == "deflate":
        return _Decoder(zlib.MAX_WBITS)
    return None


def require_whole(resp: requests.Response, what: str) -> None:
    """For callers that need the whole body (a document, not an acknowledgement)."""
    cut_off = getattr(resp, "cut_off", None)
    if cut_off == "deadline" or cut_off == "connection":
        raise RetryableError(f"{what}: the reply body did not arrive in full"
                             + (" within the deadline" if cut_off == "deadline" else ""),
                             status=resp.status_code)
    if cut_off == "size":
        raise PermanentError(f"{what}: the reply body is larger than "
                             f"{len(resp.content)} bytes", status=resp.status_code)
    if cut_off == "encoding":
        raise PermanentError(f"{what}: the reply body could not be decoded (a Content-Encoding "
                             "not asked for, or corrupt)", status=resp.status_code)


def delivered_note(resp: requests.Response, note: str | None = None) -> str:
    """The attempt note for a 2xx from a target. A 2xx whose body was cut off (endless,
    too large, undecodable) still counts as delivered: the status line is the target's
    acknowledgement, sent once it had the request; sending again would deliver twice, and
    the body of a forward's reply is not used."""
    cut_off = getattr(resp, "cut_off", None)
    note = note or f"HTTP {resp.status_code}"
    return f"{note} (reply body cut off: {cut_off})" if cut_off else note


def raise_for_status(resp: requests.Response, what: str, detail: str = "") -> None:
    code = resp.status_code
    if 200 <= code < 300:
        return
    suffix = f": {detail}" if detail else ""
    if code in (408, 429) or code >= 500:
        raise RetryableError(f"{what} answered {code}{suffix}",
                             retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                             status=code)
    if 300 <= code < 400:
        suffix = suffix or ": redirects are not followed"
    raise PermanentError(f"{what} answered {code}{suffix}", status=code)
