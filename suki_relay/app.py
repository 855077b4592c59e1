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
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

from . import logs, metrics, verify
from .config import Config
from .record import recorder, to_event
from .store import Store, StoreUnavailable
from .verify import Rejected

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .deliver import Deliverer

log = logging.getLogger("suki_relay.receiver")
ENV_DELIVER = "SUKI_RELAY_DELIVER"  # "0": this process receives only (run `suki-relay worker`)


def json_response(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def error(status: int, reason: str, message: str) -> Response:
    return json_response(status, {"error": reason, "message": message})


class RelayApp:
    def __init__(self, config: Config, store: Store, deliverer: Deliverer | None = None):
        self.config = config
        self.store = store
        self.recorder = recorder(store)
        self.deliverer = deliverer

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self.wsgi_app(environ, start_response)

    def wsgi_app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        return self.dispatch(request)(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        path = request.path
        if path == self.config.receiver.path:
            return self.receive(request)
        if path == "/healthz":
            return json_response(200, {"status": "alive"})
        if path == "/readyz":
            return self.ready()
        if self.config.metrics.enabled and path == self.config.metrics.path:
            body, content_type = metrics.render(self.store)
            return Response(body, content_type=content_type)
        return error(404, "not_found", "no such path")

    def ready(self) -> Response:
        try:
            self.store.ping()
        except Exception:
            return error(503, "store_unavailable", "the store cannot commit")
        return json_response(200, {"status": "ready"})

    # ---------------------------------------------------------------- the webhook

    def receive(self, request: Request) -> Response:
        started = time.perf_counter()
        fields: dict[str, Any] = {}
        try:
            response, outcome = self._receive(request, fields)
        except StoreUnavailable:
            response, outcome = error(503, "store_unavailable",
                                      "the notification could not be stored; not accepted"), \
                "store_unavailable"
        elapsed = time.perf_counter() - started
        metrics.count_request(outcome, elapsed)
        level = logging.WARNING if response.status_code >= 500 else logging.INFO
        logs.event(log, "request", level, outcome=outcome, http_status=response.status_code,
                   duration_ms=round(elapsed * 1000, 2), **fields)
        return response

    def _receive(self, request: Request, fields: dict[str, Any]) -> tuple[Response, str]:
        receiver = self.config.receiver
        try:
            if request.method != "POST":
                raise Rejected(405, "method_not_allowed", "only POST is accepted")
            verify.check_content_type(request.headers.get("Content-Type"))
            verify.check_length(request.content_length, receiver.max_body_bytes)
            generated_at = request.headers.get("generated-at")
            api_key = request.headers.get("X-API-Key")
            verify.check_headers(generated_at, api_key)
            body = request.stream.read(receiver.max_body_bytes + 1)
            verify.check_length(len(body), receiver.max_body_bytes)
            verified = verify.verify(generated_at or "", api_key or "", body,
                                     list(receiver.secrets), receiver.tolerance_seconds,
                                     time.time())
        except Rejected as r:
            resp = error(r.status, r.reason, r.message)
            if r.status == 405:
                resp.headers["Allow"] = "POST"
            return resp, r.reason

        event = to_event(body, verified, self.config)
        recorded = self.recorder.submit(event)
        fields.update(event_id=recorded.event_id, status=event.status,
                      session_id=event.session_id, deliveries=len(event.actions))
        if event.malformed:
            return error(400, "malformed_payload",
                         "signed body is not a JSON object with a string status; "
                         f"kept as {recorded.event_id}"), "malformed"
        if recorded.duplicate:
            return json_response(200, {"status": "duplicate", "event_id": recorded.event_id}), \
                "duplicate"
        metrics.EVENTS.labels(metrics.status_label(event.status)).inc()
        if not event.rules:
            logs.event(log, "unmatched event", logging.WARNING, event_id=recorded.event_id,
                       status=event.status, deliveries=len(event.actions))
        if self.deliverer is not None and event.actions:
            self.deliverer.wake()
        return json_response(200, {"status": "accepted", "event_id": recorded.event_id}), \
            "accepted"


def create_app(config_path: str | None = None, deliver: bool = True,
               config: Config | None = None) -> RelayApp:
    """Load config, open the store, start this process's delivery threads."""
    from .config import load_config
    from .deliver import Deliverer
    from .store import open_store

    logs.setup()
    config = config or load_config(config_path)
    store = open_store(config.store_url, config.base_dir)
    deliver = deliver and os.environ.get(ENV_DELIVER, "1") != "0"
    deliverer = Deliverer(config, store) if deliver else None
    if deliverer is not None:
        deliverer.start()
    return RelayApp(config, store, deliverer)
