"""The receiving WSGI application: request -> verify -> record, then answer. Nothing else
inline.

``suki_relay.serve.assemble`` builds it over an open store (and spool) and mounts the
console on it; the receiver itself knows nothing of the console.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import get_content_length

from suki_relay import logs, metrics, tracing
from suki_relay.config.load import Config
from suki_relay.errors import Rejected, StoreUnavailable
from suki_relay.receive import verify
from suki_relay.receive.availability import Availability
from suki_relay.receive.body import TooSlow, read_body, stop_reading
from suki_relay.receive.record import COMMIT_SECONDS, commit, recorder, to_event
from suki_relay.receive.rejections import RejectionLog, expired_hint, skew_ms
from suki_relay.store import NewEvent, Recorded, Store
from suki_relay.store.spool import SpoolFull

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from suki_relay.deliver.deliverer import Deliverer
    from suki_relay.receive.drain import Drainer
    from suki_relay.recover.recovery import GapWatcher
    from suki_relay.serve.config_state import ConfigState
    from suki_relay.store.spool import Spool

log = logging.getLogger("suki_relay.receiver")
NEW_EVENT = ("accepted", "spooled", "malformed")  # outcomes that recorded a new event
# refusals are logged at WARNING as "request refused", these with what most likely caused them
REFUSED = {
    "bad_signature": "request refused: the signature matches none of receiver.secrets; "
                     "the secret may not match Suki's",
}
READY_SECONDS = 1.0  # /readyz asks the store at most this often
JWKS_PATH = "/.well-known/jwks.json"  # the public keys actions sign with (SMART Backend Services)


class Answer:
    """A short JSON answer, written straight to the WSGI server (no framework objects:
    on the webhook path they cost more than verifying the signature)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()):
        self.status = status
        self.body = json.dumps(body).encode()
        self.headers = headers

    def __call__(self, start_response: StartResponse) -> list[bytes]:
        start_response(f"{self.status} {HTTP_STATUS_CODES.get(self.status, '')}",
                       [("Content-Type", "application/json"),
                        ("Content-Length", str(len(self.body))), *self.headers])
        return [self.body]


def problem(exc: BaseException) -> str:
    """What a store or spool said, short and free of payload (StoreUnavailable's message
    names the backend and the error class; anything else, its class)."""
    if isinstance(exc, SpoolFull):
        return "full (spool.max_events)"
    if isinstance(exc, StoreUnavailable):
        return str(exc)[:200]
    return type(exc).__name__


def error(status: int, reason: str, message: str) -> Answer:
    headers = (("Allow", "POST"),) if status == 405 else (
        (("Connection", "close"),) if status == 408 else ())
    return Answer(status, {"error": reason, "message": message}, headers)


def has_body(environ: WSGIEnvironment) -> bool:
    """The request says a body follows (a length, or chunks)."""
    return environ.get("CONTENT_LENGTH", "") not in ("", "0") or \
        "HTTP_TRANSFER_ENCODING" in environ


def last_on_connection(environ: WSGIEnvironment, start_response: StartResponse
                       ) -> StartResponse:
    """``start_response``, which first ends the reading side of the connection (a request
    off the webhook path, with a body it may not have read: body.stop_reading)."""
    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        stop_reading(environ)
        return start_response(status, headers, exc_info)

    return start  # type: ignore[return-value]


class RelayApp:
    """The WSGI app of a relay process: the receiver (which takes the store as Receiving),
    with /metrics, the probes and the console mounted beside it (which read it as
    Administering)."""

    def __init__(self, config: Config, store: Store, state: ConfigState,
                 deliverer: Deliverer | None = None, watcher: GapWatcher | None = None,
                 spool: Spool | None = None, drainer: Drainer | None = None):
        from suki_relay.store.spool import Spooling

        self.config = config
        self.config_state = state
        self.store = store
        self.spool = spool
        self.availability = Availability(spool is not None)
        self._config_remembered = False  # recorded by the first readiness that can
        self.process: Any = None  # this process's background parts (serve/process.py)
        self.recorder = recorder(store)
        self.count_event = metrics.event_counter(config.rules)
        self.deliverer = deliverer
        self.store_stats = metrics.StoreStats(store)
        self._ready: tuple[float, tuple[int, dict[str, Any]] | None] = (0.0, None)
        self.ready_seconds = READY_SECONDS
        self._store_down = False  # the last commit failed: the next success is news
        self._store_error = "the store is unavailable"  # what the last failed commit said
        self._trying = 0  # requests committing to the store now
        self._trying_lock = threading.Lock()
        self.watcher = watcher
        self.rejections = RejectionLog(store)
        self.spooling = Spooling(spool) if spool is not None else None
        self.drainer = drainer
        self.console: Any = None  # the operator console's WSGI app, when mounted
        self.console_prefix = config.console.path

    def remember_config(self) -> bool:
        """Record the running config's version (the audit trail of config versions), at
        the process's start (its first readiness); never a reason not to start: a store
        that cannot take it then is tried again at the next readiness that finds it back.
        True once recorded."""
        try:
            self.store.remember_config(self.config_state.version,
                                       str(self.config.file.resolve()))
        except StoreUnavailable as exc:
            self._config_remembered = False
            self.availability.note(store=problem(exc))
            return False
        self._config_remembered = True
        return True

    def mount_console(self, console: Any) -> None:
        """Hand requests under ``console.path`` to ``console`` (a WSGI app)."""
        self.console = console

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == self.config.receiver.path:
            return self.receive(environ)(start_response)
        if has_body(environ):
            start_response = last_on_connection(environ, start_response)
        if path == "/healthz":
            return Answer(200, {"status": "alive"})(start_response)
        if path == "/readyz":
            return self.ready()(start_response)
        if path == JWKS_PATH:
            return self.jwks()(start_response)
        if self.config.metrics.enabled and path == self.config.metrics.path:
            body, content_type = metrics.render(self.store_stats, self.config_state, self.spool)
            start_response("200 OK", [("Content-Type", content_type),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if self.console is not None and (path == self.console_prefix or path.startswith(
                self.console_prefix + "/")):
            return self.console(environ, start_response)
        return error(404, "not_found", "no such path")(start_response)

    def jwks(self) -> Answer:
        """The JWK Set of every key the configured actions sign with (the EHR's JWK Set URL
        points here). Public halves only; a key that cannot be loaded is left out (`check`
        names it)."""
        keys = getattr(self, "_jwks", None)
        if keys is None:
            found: dict[str, dict[str, Any]] = {}
            for name, spec in self.config.actions.items():
                try:
                    for jwk in spec.action.public_keys():
                        found.setdefault(str(jwk.get("kid")), jwk)
                except Exception as exc:
                    logs.event(log, "signing keys not published", logging.WARNING, action=name,
                               error_class=type(exc).__name__)
            keys = self._jwks = list(found.values())
        return Answer(200, {"keys": keys}, (("Cache-Control", "max-age=300"),))

    def ready(self) -> Answer:
        """/readyz: the readiness below as an HTTP answer."""
        status, body = self.readiness()
        return Answer(status, body)

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """The HTTP status /readyz answers and what it says, as data. Asked of the store (a
        write transaction) at most once every ``ready_seconds``, however often probes come;
        sooner when a request has just found the store gone, or back."""
        at, answer = self._ready
        now = time.monotonic()
        if answer is None or now - at >= self.ready_seconds:
            answer = self._readiness()
            self._ready = (now, answer)
        return answer

    def _readiness(self) -> tuple[int, dict[str, Any]]:
        """200 while a notification can be committed: to the store, or (a degraded state a
        load balancer must not act on: every node would go) to the spool, each asked with
        a write that needs what a notification needs. 503 when neither can, saying why."""
        try:
            with self.store.bounded(COMMIT_SECONDS):
                self.store.ping()
            store_problem = None
        except Exception as exc:
            store_problem = problem(exc)
        if store_problem is None and not self._config_remembered:
            with self.store.bounded(COMMIT_SECONDS):
                self.remember_config()
        spooled, spool_problem = self._spool_room()
        self.availability.note(store=store_problem, spool=spool_problem)
        if store_problem is not None and (self.spool is None or spool_problem is not None):
            return 503, {"error": "store_unavailable", "message": "the store cannot commit"
                         + (", nor the spool" if self.spool is not None else ""),
                         **self.availability.why()}
        body: dict[str, Any] = {"status": "ready" if store_problem is None else "degraded"}
        if self.spool is not None:
            body.update(store="ok" if store_problem is None else "unavailable",
                        spooled=spooled if spooled is not None else "unavailable")
            if spool_problem is not None:
                body["spool"] = spool_problem
        return 200, {**body, **self.config_state.describe()}

    def _spool_room(self) -> tuple[int | None, str | None]:
        """How many events wait in the spool, and what keeps it from taking one more (a
        write that fails, no room left), if anything."""
        if self.spool is None:
            return None, None
        try:
            summary = self.spool.summary()
            if summary["room"] <= 0:
                return summary["spooled"], "full (spool.max_events)"
            self.spool.ping()
        except Exception as exc:
            return None, problem(exc)
        return summary["spooled"], None

    # ---------------------------------------------------------------- the webhook

    def receive(self, environ: WSGIEnvironment) -> Answer:
        started = time.perf_counter()
        fields: dict[str, Any] = {}
        marks = {"start": time.time_ns()} if tracing.ON else None  # for the spans, after
        try:
            answer, outcome = self._receive(environ, fields, marks)
        except StoreUnavailable as exc:
            answer, outcome = error(503, "store_unavailable",
                                    "the notification could not be stored; not accepted"), \
                "spool_full" if isinstance(exc, SpoolFull) else "store_unavailable"
            self.rejections.add(outcome, 503, None, environ.get("REMOTE_ADDR"))
            if self.spool is None:  # else noted with the spool's answer
                self.availability.note(store=problem(exc))
        elapsed = time.perf_counter() - started
        metrics.count_request(outcome, elapsed)
        level = logging.WARNING if answer.status >= 400 else logging.INFO
        logs.event(log, REFUSED.get(outcome, "request refused" if answer.status >= 400
                                    else "request"), level, outcome=outcome,
                   http_status=answer.status, duration_ms=round(elapsed * 1000, 2), **fields)
        if marks is not None:
            marks["end"] = time.time_ns()
            tracing.receipt(marks, outcome, answer.status, fields.get("event_id"),
                            outcome in NEW_EVENT)
        return answer

    def _receive(self, environ: WSGIEnvironment, fields: dict[str, Any],
                 marks: dict[str, int] | None = None) -> tuple[Answer, str]:
        receiver = self.config.receiver
        read_all = False
        try:
            if environ.get("REQUEST_METHOD") != "POST":
                raise Rejected(405, "method_not_allowed", "only POST is accepted")
            verify.check_content_type(environ.get("CONTENT_TYPE"))
            verify.check_length(get_content_length(environ), receiver.max_body_bytes)
            generated_at = environ.get("HTTP_GENERATED_AT")
            api_key = environ.get("HTTP_X_API_KEY")
            verify.check_headers(generated_at, api_key)
            try:
                body = read_body(environ, receiver.max_body_bytes + 1,
                                 receiver.read_timeout_seconds)
            except TooSlow:
                raise Rejected(408, "request_timeout", "the body did not arrive within "
                               f"{receiver.read_timeout_seconds:g} seconds") from None
            verify.check_length(len(body), receiver.max_body_bytes)
            read_all = True
            verified = verify.verify(generated_at or "", api_key or "", body,
                                     list(receiver.secrets), receiver.tolerance_seconds,
                                     time.time())
        except Rejected as r:
            if not read_all:  # refused before the whole body was read
                stop_reading(environ)
            self.rejected(r, environ, fields)
            return error(r.status, r.reason, r.message), r.reason
        if marks is not None:
            marks["verified"] = time.time_ns()

        event = to_event(body, verified, self.config, self.config_state.version)
        spooled = False
        if self.spool is not None and self.spool.maybe_waiting:
            first = self._spooled_before(event)
            if first is not None:
                fields.update(event_id=first, status=event.status, session_id=event.session_id)
                return Answer(200, {"status": "duplicate", "event_id": first,
                                    "spooled": True}), "duplicate"
        try:
            event, recorded = self._commit(event)
        except StoreUnavailable as exc:
            self._store_down = True
            self._store_error = str(exc)
            self._ready = (0.0, None)  # readiness is news now: ask again
            if self.spooling is None:
                raise
            try:
                recorded = self.spooling.submit(event, exc)
            except StoreUnavailable as full:
                self.availability.note(store=problem(exc), spool=problem(full))
                raise
            self.availability.note(store=problem(exc), spool=None)
            spooled = True
        else:
            if self._store_down:  # back: readiness is news again
                self._store_down = False
                self._ready = (0.0, None)
                self.availability.note(store=None)
            if self.spooling is not None and self.spooling.active:
                self.spooling.stopped()
                if self.drainer is not None:
                    self.drainer.wake()
        if marks is not None:
            marks["recorded"] = time.time_ns()
        fields.update(event_id=recorded.event_id, status=event.status,
                      session_id=event.session_id, deliveries=len(event.actions))
        if spooled:
            fields["spooled"] = True
        if event.malformed:
            return error(400, "malformed_payload",
                         "signed body is not a JSON object with a string status; "
                         f"kept as {recorded.event_id}"), "malformed"
        if recorded.duplicate:
            return Answer(200, {"status": "duplicate", "event_id": recorded.event_id,
                                **({"spooled": True} if spooled else {})}), "duplicate"
        self.count_event(event.status or "")
        if not event.rules:
            logs.event(log, "unmatched event", logging.WARNING, event_id=recorded.event_id,
                       status=event.status, deliveries=len(event.actions))
        if spooled:
            return Answer(200, {"status": "accepted", "event_id": recorded.event_id,
                                "spooled": True}), "spooled"
        if self.deliverer is not None and event.actions:
            self.deliverer.wake(event.actions)
        return Answer(200, {"status": "accepted", "event_id": recorded.event_id}), "accepted"


    def _commit(self, event: NewEvent) -> tuple[NewEvent, Recorded]:
        """commit() to the store; but while the store was down at the last commit and
        another request is trying it again right now, StoreUnavailable at once (the spool
        takes the event) instead of after that request's attempt. With nobody trying, this
        request tries: the first request to find the store back commits there."""
        if self.spooling is not None and self._store_down and self._trying:
            raise StoreUnavailable(self._store_error)
        with self._trying_lock:
            self._trying += 1
        try:
            return commit(self.recorder, event)
        finally:
            with self._trying_lock:
                self._trying -= 1

    def rejected(self, r: Rejected, environ: WSGIEnvironment, fields: dict[str, Any]) -> None:
        """Keep a trace of the refusal (no body); an expiry logs its skew and a hint."""
        skew = skew_ms(environ.get("HTTP_GENERATED_AT"), time.time())
        if skew is not None:
            fields["skew_ms"] = skew
            if r.reason == "expired":
                fields["hint"] = expired_hint(skew)
        self.rejections.add(r.reason, r.status, skew, environ.get("REMOTE_ADDR"))

    def _spooled_before(self, event: NewEvent) -> str | None:
        """While this node's spool may hold events: the one spooled with this request's
        dedup key (the same request sent again after the outage, before it was moved)."""
        assert self.spool is not None
        try:
            return self.spool.find(event.dedup_key)
        except Exception:  # the spool unreadable: the store's dedup key still holds
            return None
