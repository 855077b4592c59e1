"""The WSGI application: request -> verify -> record, then answer. Nothing else inline.

``create_app()`` loads the config, opens the store and (unless told not to) starts the
delivery threads of this process, so ``gunicorn 'suki_relay.wsgi:app'`` alone both
receives and delivers.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import get_content_length

from . import logs, metrics, verify
from .body import TooSlow, read_body
from .config import Config
from .config_state import ConfigState, load_or_last_good, version
from .record import commit, recorder, to_event
from .store import Store, StoreUnavailable
from .verify import Rejected

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .deliver import Deliverer

log = logging.getLogger("suki_relay.receiver")
READY_SECONDS = 1.0  # /readyz asks the store at most this often
ENV_DELIVER = "SUKI_RELAY_DELIVER"  # "0": this process receives only (run `suki-relay worker`)


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


def error(status: int, reason: str, message: str) -> Answer:
    headers = (("Allow", "POST"),) if status == 405 else (
        (("Connection", "close"),) if status == 408 else ())
    return Answer(status, {"error": reason, "message": message}, headers)


class RelayApp:
    def __init__(self, config: Config, store: Store, deliverer: Deliverer | None = None,
                 state: ConfigState | None = None):
        self.config = config
        self.config_state = state or ConfigState(version(config.text))
        try:  # the audit trail of config versions; never a reason not to start
            store.remember_config(self.config_state.version, str(config.file.resolve()))
        except StoreUnavailable as exc:
            logs.event(log, "config version not recorded: store unavailable", logging.WARNING,
                       version=self.config_state.version, error=str(exc)[:200])
        self.store = store
        self.recorder = recorder(store)
        self.count_event = metrics.event_counter(
            s for rule in config.rules for s in rule.statuses or ())
        self.deliverer = deliverer
        self.store_stats = metrics.StoreStats(store)
        self._ready: tuple[float, Answer | None] = (0.0, None)
        self.ready_seconds = READY_SECONDS
        self.console: Any = None  # the operator console's WSGI app, when enabled
        self.console_prefix = config.console.path
        if config.console.enabled:
            from .console.app import Console

            self.console = Console(self)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == self.config.receiver.path:
            return self.receive(environ)(start_response)
        if path == "/healthz":
            return Answer(200, {"status": "alive"})(start_response)
        if path == "/readyz":
            return self.ready()(start_response)
        if self.config.metrics.enabled and path == self.config.metrics.path:
            body, content_type = metrics.render(self.store_stats, self.config_state)
            start_response("200 OK", [("Content-Type", content_type),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if self.console is not None and (path == self.console_prefix or path.startswith(
                self.console_prefix + "/")):
            return self.console(environ, start_response)
        return error(404, "not_found", "no such path")(start_response)

    def ready(self) -> Answer:
        """Can this process commit? Asked of the store (a write transaction) at most once
        every ``ready_seconds``, however often probes come."""
        at, answer = self._ready
        now = time.monotonic()
        if answer is None or now - at >= self.ready_seconds:
            try:
                self.store.ping()
            except Exception:
                answer = error(503, "store_unavailable", "the store cannot commit")
            else:
                answer = Answer(200, {"status": "ready", **self.config_state.describe()})
            self._ready = (now, answer)
        return answer

    # ---------------------------------------------------------------- the webhook

    def receive(self, environ: WSGIEnvironment) -> Answer:
        started = time.perf_counter()
        fields: dict[str, Any] = {}
        try:
            answer, outcome = self._receive(environ, fields)
        except StoreUnavailable:
            answer, outcome = error(503, "store_unavailable",
                                    "the notification could not be stored; not accepted"), \
                "store_unavailable"
        elapsed = time.perf_counter() - started
        metrics.count_request(outcome, elapsed)
        level = logging.WARNING if answer.status >= 500 else logging.INFO
        logs.event(log, "request", level, outcome=outcome, http_status=answer.status,
                   duration_ms=round(elapsed * 1000, 2), **fields)
        return answer

    def _receive(self, environ: WSGIEnvironment, fields: dict[str, Any]) -> tuple[Answer, str]:
        receiver = self.config.receiver
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
            verified = verify.verify(generated_at or "", api_key or "", body,
                                     list(receiver.secrets), receiver.tolerance_seconds,
                                     time.time())
        except Rejected as r:
            return error(r.status, r.reason, r.message), r.reason

        event, recorded = commit(self.recorder, to_event(body, verified, self.config,
                                                         self.config_state.version))
        fields.update(event_id=recorded.event_id, status=event.status,
                      session_id=event.session_id, deliveries=len(event.actions))
        if event.malformed:
            return error(400, "malformed_payload",
                         "signed body is not a JSON object with a string status; "
                         f"kept as {recorded.event_id}"), "malformed"
        if recorded.duplicate:
            return Answer(200, {"status": "duplicate", "event_id": recorded.event_id}), \
                "duplicate"
        self.count_event(event.status or "")
        if not event.rules:
            logs.event(log, "unmatched event", logging.WARNING, event_id=recorded.event_id,
                       status=event.status, deliveries=len(event.actions))
        if self.deliverer is not None and event.actions:
            self.deliverer.wake(event.actions)
        return Answer(200, {"status": "accepted", "event_id": recorded.event_id}), "accepted"


def create_app(config_path: str | None = None, deliver: bool = True,
               config: Config | None = None, state: ConfigState | None = None,
               shared: Path | None = None) -> RelayApp:
    """Load config, open the store, start this process's delivery threads.

    ``shared``: the folder a gunicorn master's workers share (runtime.py); a config that
    fails to load there falls back to the last one that loaded."""
    from .deliver import Deliverer
    from .store import open_store

    logs.setup()
    if config is None:
        config, state = load_or_last_good(config_path, shared)
    store = open_store(config.store_url, config.base_dir)
    deliver = deliver and os.environ.get(ENV_DELIVER, "1") != "0"
    deliverer = Deliverer(config, store) if deliver else None
    if deliverer is not None:
        deliverer.start()
    return RelayApp(config, store, deliverer, state)
