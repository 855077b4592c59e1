"""Outbound HTTP for actions: one place that turns what happened into retry or give up.

Retryable: connection errors, timeouts, 408, 429 and 5xx (honouring Retry-After).
Permanent: every other non-2xx, redirects included (they are not followed, so a
credential never travels to a host the config did not name). Messages carry the status
and never the URL, which may itself be a secret (a Slack webhook URL is).
"""

from __future__ import annotations

import email.utils
import os
import threading
import time
import urllib.request
from typing import Any

import requests

from .errors import PermanentError, RetryableError


def new_session() -> requests.Session:
    """A requests session that reads the environment once, not on every request (those
    lookups cost more than a local POST, and include reading ~/.netrc, whose credentials
    must never reach a target). A CA bundle from REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE is
    used as requests would. When a proxy is configured, requests' own handling of the
    environment is kept whole (NO_PROXY, and ~/.netrc with it)."""
    session = requests.Session()
    session.trust_env = bool(urllib.request.getproxies())
    if not session.trust_env:
        session.verify = (os.environ.get("REQUESTS_CA_BUNDLE")
                          or os.environ.get("CURL_CA_BUNDLE") or True)
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


def send(session: requests.Session, method: str, url: str, *, what: str, timeout: float,
         delivery: Any = None, **kwargs: Any) -> requests.Response:
    """Make one request; transport failures become RetryableError. With ``delivery``, the
    answer's HTTP status is recorded on it (shown with the attempt by `suki-relay show`)."""
    try:
        resp = session.request(method, url, timeout=timeout, allow_redirects=False, **kwargs)
        if delivery is not None:
            delivery.http_status = resp.status_code
        return resp
    except requests.Timeout:
        raise RetryableError(f"{what}: no answer within {timeout:g}s") from None
    except requests.ConnectionError:
        raise RetryableError(f"{what}: connection failed") from None
    except requests.RequestException as exc:
        raise PermanentError(f"{what}: request could not be made ({type(exc).__name__})") from None


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
