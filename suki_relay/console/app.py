"""The console's WSGI app: werkzeug routing under ``console.path``, Jinja pages.

RelayApp hands a request here only when the console is enabled and the path is under its
prefix (after the webhook, health and metrics paths), so the webhook pays nothing for it.
Every page but the sign-in form needs a session; every POST needs the session's CSRF
token (only a POST changes anything: HEAD is GET without side effects); every response
forbids caching, framing and inline script.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import Map, Rule
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from suki_relay import logs
from suki_relay.console.auth import Keys, Session, SharedThrottle
from suki_relay.console.views import Views
from suki_relay.printable import printable
from suki_relay.store import StoreUnavailable

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from suki_relay.receive.app import RelayApp

log = logging.getLogger("suki_relay.console")
SESSION_KEY = "suki_relay.console.session"  # in the WSGI environ: (session, store could say)
HERE = Path(__file__).parent
STATIC = {"console.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}
# the least role each endpoint needs; every other page is for any signed-in user. A viewer
# reads (no payloads, no changes), an operator also shows payloads, replays, reroutes,
# resumes and settles deliveries whose outcome is unknown, an admin also reads the audit trail
RIGHTS = {"payload": "operator", "reroute": "operator", "replay": "operator",
          "replay_failed": "operator", "replay_bulk": "operator", "resume": "operator",
          "resolve": "operator",
          "audit": "admin"}
COOKIE = "suki_console"
LOGIN_COOKIE = "suki_console_login"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
CONCURRENT_CHECKS = 2
FORWARDED = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_REAL_IP")


class ConsoleRequest(Request):
    max_content_length = 64 * 1024  # forms only
    max_form_parts = 50


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def served_on_loopback(request: Request) -> bool:
    """A browser on this machine talking straight to the relay: the Host it asked for and
    the address it came from are both loopback, and no proxy says it forwarded the request.
    Anything else gets Secure cookies (so over plain HTTP elsewhere, sign-in cannot work)."""
    env = request.environ
    return (request.scheme == "http" and _loopback(urlsplit("//" + request.host).hostname or "")
            and _loopback(env.get("REMOTE_ADDR", "")) and not any(env.get(h) for h in FORWARDED))


class Console:
    def __init__(self, relay: RelayApp):
        config = relay.config
        self.config = config
        self.settings = config.console
        self.prefix = self.settings.path
        self.keys = Keys(self.settings, config.receiver.secrets)
        self.store = relay.store  # where signed-out sessions are kept, for every node
        # configured names, unknown names (so a 429 does not tell which names exist; kept
        # apart so a flood of made-up names cannot push out a real user's count), addresses
        self.users_throttle = SharedThrottle(self.store, "user", free=5)
        self.unknown_throttle = SharedThrottle(self.store, "unknown", free=5)
        self.addresses_throttle = SharedThrottle(self.store, "address", free=20)
        # scrypt takes 32 MiB and 0.3-1 s of CPU per check (it releases the GIL, so the
        # webhook's threads run meanwhile): two at a time per process, and a sign-in that
        # finds both busy is told to retry rather than made to wait
        self.checking = threading.BoundedSemaphore(CONCURRENT_CHECKS)
        self.jinja = Environment(loader=FileSystemLoader(HERE / "templates"),
                                 autoescape=select_autoescape(default=True),
                                 trim_blocks=True, lstrip_blocks=True, finalize=_shown)
        self.jinja.filters.update(utc=_utc, iso=_iso, duration=_duration, ms=_ms,
                                  querystring=lambda d: urlencode(d))
        self.views = Views(self, relay)
        n = self.settings.trusted_proxies  # X-Forwarded-* of this many proxies, believed
        self.wsgi: Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]] = \
            ProxyFix(self.app, x_for=n, x_proto=n, x_host=n, x_port=n) if n else self.app
        p = self.prefix
        self.url_map = Map([
            Rule(f"{p}/", endpoint="overview", methods=["GET"]),
            Rule(f"{p}/login", endpoint="login", methods=["GET", "POST"]),
            Rule(f"{p}/logout", endpoint="logout", methods=["POST"]),
            Rule(f"{p}/events", endpoint="events", methods=["GET"]),
            Rule(f"{p}/events/<event_id>", endpoint="event", methods=["GET"]),
            Rule(f"{p}/events/<event_id>/payload", endpoint="payload", methods=["POST"]),
            Rule(f"{p}/events/<event_id>/reroute", endpoint="reroute", methods=["GET", "POST"]),
            Rule(f"{p}/failed", endpoint="failed", methods=["GET"]),
            Rule(f"{p}/replay", endpoint="replay", methods=["GET", "POST"]),
            Rule(f"{p}/resolve", endpoint="resolve", methods=["POST"]),
            Rule(f"{p}/replay-failed", endpoint="replay_failed", methods=["GET", "POST"]),
            Rule(f"{p}/static/<name>", endpoint="static", methods=["GET"]),
            Rule(f"{p}/refused", endpoint="refused", methods=["GET"]),
            Rule(f"{p}/deliveries", endpoint="deliveries", methods=["GET"]),
            Rule(f"{p}/deliveries/<delivery_id>/attempts/<int:attempt>", endpoint="attempt",
                 methods=["GET"]),
            Rule(f"{p}/search", endpoint="search", methods=["GET"]),
            Rule(f"{p}/replay-bulk", endpoint="replay_bulk", methods=["GET", "POST"]),
            Rule(f"{p}/actions/<action>/resume", endpoint="resume", methods=["GET", "POST"]),
            Rule(f"{p}/audit", endpoint="audit", methods=["GET"]),
        ])

    # ------------------------------------------------------------ WSGI

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self.wsgi(environ, start_response)

    def app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = ConsoleRequest(environ)
        try:
            response = self.dispatch(request)
        except StoreUnavailable:
            response = self.error_page(request, 503, "The store cannot be reached right now. "
                                                     "Nothing was changed; try again shortly.")
        except HTTPException as exc:
            if exc.code and exc.code < 400:  # a redirect (e.g. to the trailing slash):
                response = exc.get_response(environ)  # to a path, never to the Host header's
                target = urlsplit(response.headers.get("Location", ""))
                response.headers["Location"] = target.path + (
                    f"?{target.query}" if target.query else "")
            else:
                response = self.error_page(request, exc.code or 500, exc.description or exc.name)
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        if not acceptable(request):
            return self.error_page(request, 400, "That address or form holds a character the "
                                                 "console does not accept (a NUL).")
        adapter = self.url_map.bind_to_environ(request.environ)
        endpoint, values = adapter.match()
        if endpoint == "static":
            return self.static(values["name"])
        if endpoint == "login":
            return self.login(request)
        session, known = self.checked_session(request)
        if session is None:
            if request.method == "POST":
                return self.error_page(request, 403, "You are not signed in (or your session "
                                                     "ended). Sign in and try again.", None)
            return redirect(f"{self.prefix}/login?{urlencode({'next': request.full_path})}",
                            303)
        if request.method == "POST" and not self.csrf_ok(request, session):
            return self.error_page(request, 403, "This form could not be accepted: it has "
                                                 "expired or did not come from this console. "
                                                 "Go back, reload the page and try again.",
                                   session)
        if endpoint == "logout":
            return self.logout(request, session)
        if request.method == "POST" and not known:
            # maybe signed out on another node, and the store cannot say: change nothing
            raise StoreUnavailable("cannot tell whether the session was signed out")
        needed = RIGHTS.get(endpoint)
        if needed is not None and not session.may(needed):
            self.audit(session, f"refused: {endpoint.replace('_', ' ')}",
                       values.get("event_id") or values.get("action"), request=request,
                       needs=needed)
            return self.error_page(request, 403, f"Your role ({session.role}) may not do this; "
                                   f"it needs {needed} or above. The attempt is recorded in "
                                   "the audit trail.", session)
        handler: Callable[..., Response] = getattr(self.views, endpoint)
        return handler(request, session, **values)

    # ------------------------------------------------------------ rendering

    def render(self, request: Request, template: str, session: Session | None,
               status: int = 200, **context: Any) -> Response:
        html = self.jinja.get_template(template).render(
            prefix=self.prefix, session=session, request=request, **context)
        return Response(html, status, content_type="text/html; charset=utf-8")

    def error_page(self, request: Request, status: int, message: str,
                   session: Session | bool | None = False) -> Response:
        if session is False:
            session = self.session(request)
        assert session is not True
        return self.render(request, "error.html", session, status, code=status,
                           message=message)

    def static(self, name: str) -> Response:
        if name not in STATIC:
            raise NotFound()
        return Response((HERE / "static" / name).read_bytes(), content_type=STATIC[name])

    def audit(self, session: Session | str, what: str, target: str | None,
              request: Request | None = None, level: int = logging.INFO,
              stored: bool = True, **fields: Any) -> None:
        """One action: who, what, on what (an event, a delivery, an action); never a
        payload. A log line, and a row of the audit trail in the store (the audit page)."""
        user, role = (session.user, session.role) if isinstance(session, Session) else \
            (session, "-")
        on = {"event_id" if (target or "").startswith("evt_") else "target": target}
        logs.event(log, "console audit", level, user=user, action=what, **on, role=role,
                   **fields)
        detail = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None) or None
        if stored:  # False: the caller stores one row for many log lines
            self.record(user, role, what, target, detail, request)

    def record(self, user: str, role: str, what: str, target: str | None,
               detail: str | None, request: Request | None) -> None:
        """A row of the audit trail in the store (the log line is the caller's)."""
        try:
            self.store.add_audit(user, role, what, target, detail,
                                 request.remote_addr if request is not None else None)
        except StoreUnavailable:
            logs.event(log, "console audit not stored: store unavailable", logging.WARNING,
                       user=user, action=what)

    # ------------------------------------------------------------ sessions

    def csrf_ok(self, request: Request, session: Session) -> bool:
        origin = request.headers.get("Origin")
        if origin and origin != "null" and not self.same_origin(request, origin):
            return False
        token = request.form.get("csrf", "")
        return hmac.compare_digest(token.encode(), session.csrf.encode())

    def same_origin(self, request: Request, origin: str) -> bool:
        """Whether a browser's Origin is this console's: ``public_origin`` when configured
        (scheme and host), else the host the request names (as forwarded by
        ``trusted_proxies``, when set)."""
        public = self.settings.public_origin
        if public:
            return origin.lower() == public.lower()
        return urlsplit(origin).netloc.lower() == request.host.lower()

    def secure(self, request: Request) -> bool:
        """Secure cookies, unless a browser on this machine talks straight to the relay
        over plain HTTP (or the configured public origin is itself plain HTTP)."""
        if self.settings.public_origin:
            return self.settings.public_origin.startswith("https:")
        if self.settings.trusted_proxies:  # the scheme and host the browser used
            return request.scheme == "https" or not _loopback(
                urlsplit("//" + request.host).hostname or "")
        return not served_on_loopback(request)

    def set_cookie(self, request: Request, response: Response, name: str, value: str,
                   max_age: int | None) -> None:
        response.set_cookie(name, value, max_age=max_age, path=self.prefix + "/",
                            secure=self.secure(request), httponly=True, samesite="Strict")

    def login(self, request: Request) -> Response:
        current = self.session(request)
        target = self.safe_next(request.values.get("next"))
        if current is not None and request.method != "POST":
            return redirect(target, 303)
        nonce = request.cookies.get(LOGIN_COOKIE) or ""
        if request.method != "POST" or not nonce:
            return self.login_form(request, target)
        if not self.keys.check_login_csrf(nonce, request.form.get("csrf")):
            return self.login_form(request, target, "The sign-in form expired. Please try "
                                                    "again.", 403)
        user = request.form.get("username", "").strip()[:64]
        password = request.form.get("password", "")[:1024]
        address = request.remote_addr or "-"
        known = user in self.settings.users
        names = self.users_throttle if known else self.unknown_throttle
        user_keys, address_keys = [f"user:{user.lower()}"], [f"addr:{address}"]
        wait = max(names.wait(user_keys), self.addresses_throttle.wait(address_keys))
        if wait > 0:
            logs.event(log, "console sign-in refused: too many failures", logging.WARNING,
                       user=user if known else "(unknown)", client=address)
            response = self.login_form(request, target, "Too many failed sign-ins. Try again "
                                       f"in {int(wait) + 1} seconds.", 429, user)
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        if not self.checking.acquire(blocking=False):
            response = self.login_form(request, target, "Sign-in is busy. Try again in a few "
                                       "seconds.", 429, user)
            response.headers["Retry-After"] = "2"
            return response
        try:
            ok = self.keys.check_password(user, password)
        finally:
            self.checking.release()
        if not ok:
            names.failed(user_keys)
            self.addresses_throttle.failed(address_keys)
            logs.event(log, "console sign-in failed", logging.WARNING,
                       user=user if known else "(unknown)", client=address)
            self.record(user if known else "(unknown)", "-", "sign-in failed", None, None,
                        request)
            return self.login_form(request, target, "Wrong user name or password.", 401, user)
        names.succeeded(user_keys)
        self.addresses_throttle.succeeded(address_keys)
        logs.event(log, "console sign-in", user=user, client=address)
        self.record(user, self.keys.roles[user], "sign in", None, None, request)
        response = redirect(target, 303)
        self.set_cookie(request, response, COOKIE, self.keys.issue(user),
                        int(self.settings.session_hours * 3600))
        self.set_cookie(request, response, LOGIN_COOKIE, "", 0)
        return response

    def login_form(self, request: Request, target: str, error: str | None = None,
                   status: int = 200, user: str = "") -> Response:
        nonce = secrets.token_urlsafe(16)
        response = self.render(request, "login.html", None, status, error=error, user=user,
                               next=target, csrf=self.keys.login_csrf(nonce))
        self.set_cookie(request, response, LOGIN_COOKIE, nonce, 3600)
        if request.cookies.get(COOKIE) and self.session(request) is None:
            self.set_cookie(request, response, COOKIE, "", 0)  # signed out, expired, forged
        return response

    def checked_session(self, request: Request) -> tuple[Session | None, bool]:
        """The session the request's cookie proves, unless it was signed out (on any
        node: the store keeps signed-out sessions until they would have expired), and
        whether the store could say. Asked of the store once per request. While it cannot
        say, the signed cookie stands for reading (every page that reads the store answers
        503 anyway, and the overview then shows only that the store is down), not for
        changing anything: see :meth:`dispatch`."""
        if SESSION_KEY not in request.environ:
            session, known = self.keys.session(request.cookies.get(COOKIE)), True
            if session is not None:
                try:
                    if self.store.signed_out(session.nonce):
                        session = None
                except StoreUnavailable:
                    known = False
            request.environ[SESSION_KEY] = (session, known)
        return request.environ[SESSION_KEY]  # type: ignore[no-any-return]

    def session(self, request: Request) -> Session | None:
        return self.checked_session(request)[0]

    def logout(self, request: Request, session: Session) -> Response:
        """End the session everywhere; with the store unreachable, at least in this
        browser (the page says the rest could not be done)."""
        try:
            self.store.sign_out(session.nonce, session.expires)
            everywhere = True
        except StoreUnavailable:
            everywhere = False
        logs.event(log, "console sign-out", logging.INFO if everywhere else logging.WARNING,
                   user=session.user, **({} if everywhere else {"recorded": False}))
        response = redirect(f"{self.prefix}/login?signed_out={1 if everywhere else 'here'}",
                            303)
        self.set_cookie(request, response, COOKIE, "", 0)
        return response

    def safe_next(self, target: str | None) -> str:
        """Only a path inside the console (no open redirect), without control characters
        (a CR LF would end the Location header)."""
        if target and not any(ord(c) < 0x20 or ord(c) == 0x7f for c in target):
            parts = urlsplit(target)
            if not parts.scheme and not parts.netloc and not target.startswith("//") and \
                    "\\" not in target and parts.path.startswith(self.prefix + "/") and \
                    not parts.path.startswith(f"{self.prefix}/login"):
                return target.rstrip("?")
        return f"{self.prefix}/"


def acceptable(request: Request) -> bool:
    """No NUL in the path, the query or the form: no store takes one in a lookup
    (PostgreSQL refuses it outright), and no id, filter or name of ours holds one."""
    texts = [request.path]
    for pairs in (request.args, request.form) if request.method == "POST" else (request.args,):
        for key, values in pairs.lists():
            texts += [key, *values]
    return not any("\x00" in text for text in texts)


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _duration(seconds: float) -> str:
    """A short human age: 0 s, 42 s, 3 min, 2 h 5 min, 3 d 4 h."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.001 else "< 1 ms"


def _shown(value: Any) -> Any:
    """Every value a page prints: payload text (a status, an id, an error) arrives with
    control characters and bidirectional overrides escaped, as in logs and the CLI, so a
    hostile id cannot reorder or hide what an operator reads. Whole: pages do not cut."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return printable(value, limit=None, keep_newlines=True)
    return value
