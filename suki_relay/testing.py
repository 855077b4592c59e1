"""Test helpers for the relay and for plugin authors: real servers, real processes.

* :class:`Sink` - an HTTP server on 127.0.0.1 that records what it receives and answers
  as scripted (status sequence, delay, headers); stops itself after ``lifetime`` seconds.
* :class:`SukiStandIn` - Suki's follow-up API on 127.0.0.1 (login, content, transcript,
  status, structured data), for actions that ``fetch:``.
* :func:`build_action` - an action built through the registry and the config loader,
  validated exactly as actions.yaml would be; :func:`build_spec` the same with its core
  options (``fetch``, ``retry``), and :func:`attempt_once` one attempt as the deliverer
  makes it (links fetched first).
* :func:`make_delivery` - a Delivery for a sample or a payload of your own.
* :class:`LocalRelay` - the relay in this process (werkzeug's test Client, delivery
  threads); :class:`RelayProcess` - a real gunicorn running it on a free local port;
  :func:`pg_schema` - a fresh PostgreSQL schema as a store URL; :class:`PrivateDatabase`
  and :class:`PrivateCluster` - a database or a server of a test's own, for outages
  (all in testing_relay.py).
* :func:`post_signed`, :func:`wait_until`, :func:`free_port`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
import yaml

from . import signing
from .action import Action, Delivery
from .config import ActionSpec, Config, parse_config
from .dryrun import sample

SECRET = "test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll until predicate() is truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def post_signed(url: str, body: bytes, secret: str = SECRET, *, timeout: float = 10.0,
                headers: dict[str, str] | None = None, now: float | None = None
                ) -> requests.Response:
    sent = signing.signed_headers(secret, body, now)
    sent.update(headers or {})
    return requests.post(url, data=body, headers=sent, timeout=timeout)


def unique_body(name: str = "failure", **fields: Any) -> bytes:
    """A sample with a fresh session id (and any fields replaced)."""
    payload = json.loads(sample(name))
    payload["session_id"] = os.urandom(8).hex()
    payload.update(fields)
    return json.dumps(payload).encode()


# ---------------------------------------------------------------- a recording HTTP server


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Sink:
    """A real local HTTP server. ``replies`` are used in order, then ``default`` forever.

    ``handler`` may instead decide each reply from the request. Requests are recorded
    before the reply (and its delay), so a stalled request is already visible.
    """

    def __init__(self, default: Reply | None = None, replies: Iterable[Reply] = (),
                 handler: Callable[[Received], Reply] | None = None, lifetime: float = 120.0):
        self.default = default or Reply()
        self.replies = list(replies)
        self.handler = handler
        self.received: list[Received] = []
        self.active = 0
        self.max_active = 0
        self.completed = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                got = Received(self.command, self.path, dict(self.headers.items()),
                               self.rfile.read(length), time.time())
                reply = sink._reply(got)
                if reply.delay:
                    sink._release.wait(reply.delay)
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                finally:
                    with sink._lock:
                        sink.active -= 1
                        sink.completed += 1

            do_GET = do_POST = do_PUT = do_PATCH = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # a short poll: stop() returns within 50 ms (the default half second, per sink,
        # was most of the time a test with several sinks took)
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()

    def _reply(self, got: Received) -> Reply:
        with self._lock:
            self.received.append(got)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            if self.handler is not None:
                return self.handler(got)
            return self.replies.pop(0) if self.replies else self.default

    def release(self) -> None:
        """End every delay now (and any later one)."""
        self._release.set()

    def stop(self) -> None:
        self._timer.cancel()
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---------------------------------------------------------------- Suki's API, stood in


NOTE = {"summary": [{"title": "Assessment", "content": "PHI-NOTE-TEXT stable angina",
                     "loinc_code": "51848-0"},
                    {"title": "Plan", "content": "PHI-NOTE-PLAN follow up in 2 weeks",
                     "loinc_code": "18776-5"}],
        "structured_data": [{"title": "Vitals", "data": {"bp": "120/80"}}]}
TRANSCRIPT = {"final_transcript": [{"transcript": "PHI-TRANSCRIPT hello doctor",
                                    "start_time": 0, "end_time": 1, "lang_id": "en"}]}


class SukiStandIn:
    """A real local HTTP server answering as Suki's follow-up API does.

    Login checks the partner credentials and hands out ``tok-1``, ``tok-2``, ...; every
    other call needs a token it issued. ``api_status`` (used in order) answers the next
    API calls before anything else; ``content_status`` the next content GETs. Content,
    transcript and structured data are served for any session id. A session's status is
    ``statuses[id]`` (change it at will), else ``default_status`` (None: 404, as Suki
    answers for a session it does not know); ``asked[id]`` counts status calls, each
    answered after ``status_delay`` seconds.
    """

    def __init__(self, content: dict[str, Any] | None = None, partner_id: str = "p-1",
                 partner_token: str = "pt-SECRET", lifetime: float = 120.0,
                 statuses: dict[str, str] | None = None,
                 default_status: str | None = "completed", status_delay: float = 0.0):
        self.content = NOTE if content is None else content
        self.statuses = dict(statuses or {})
        self.default_status = default_status
        self.status_delay = status_delay
        self.asked: dict[str, int] = {}
        self.partner_id, self.partner_token = partner_id, partner_token
        self.logins: list[dict[str, Any]] = []
        self.api_status: list[int] = []
        self.content_status: list[int] = []
        self.sink = Sink(handler=self.handle, lifetime=lifetime)
        self.url = self.sink.url

    def settings(self, **extra: Any) -> dict[str, Any]:
        """The ``suki:`` section that points at this stand-in."""
        return {"base_url": self.url, "partner_id": self.partner_id,
                "partner_token": self.partner_token, **extra}

    def api_calls(self, suffix: str = "") -> list[Received]:
        return [g for g in self.sink.received
                if g.path != "/api/v1/auth/login" and g.path.split("?")[0].endswith(suffix)]

    def handle(self, got: Received) -> Reply:
        if got.path == "/api/v1/auth/login":
            body = got.json()
            if body.get("partner_id") != self.partner_id or \
                    body.get("partner_token") != self.partner_token:
                return Reply(401, b'{"error": "bad partner"}')
            self.logins.append(body)
            return Reply(200, json.dumps({"suki_token": f"tok-{len(self.logins)}"}).encode())
        if self.api_status:
            status = self.api_status.pop(0)
            if status != 200:
                return Reply(status, b"{}")
        token = got.headers.get("sdp_suki_token", "")
        if token not in {f"tok-{i + 1}" for i in range(len(self.logins))}:
            return Reply(401, b"{}")
        path = got.path.split("?")[0]
        if not path.startswith("/api/v1/ambient/session/"):
            return Reply(404, b"{}")
        if path.endswith("/content"):
            if self.content_status:
                return Reply(self.content_status.pop(0), b"{}")
            return Reply(200, json.dumps(self.content).encode())
        if path.endswith("/transcript"):
            return Reply(200, json.dumps(TRANSCRIPT).encode())
        if path.endswith("/status"):
            session = path.split("/")[-2]
            self.asked[session] = self.asked.get(session, 0) + 1
            status = self.statuses.get(session, self.default_status)
            if status is None:
                return Reply(404, b'{"error": "no such session"}')
            return Reply(200, json.dumps({"status": status}).encode(), delay=self.status_delay)
        if path.endswith("/structured-data"):
            return Reply(200, json.dumps({"structured_data": self.content.get(
                "structured_data", [])}).encode())
        return Reply(404, b"{}")

    def stop(self) -> None:
        self.sink.stop()

    def __enter__(self) -> SukiStandIn:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---------------------------------------------------------------- actions in isolation


def build_config(config: dict[str, Any], base_dir: Path) -> Config:
    """Write ``config`` (with a test secret if none) to base_dir/actions.yaml and load it."""
    config = {"receiver": {"secrets": [SECRET]}, **config}
    path = base_dir / "actions.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return parse_config(path.read_text(encoding="utf-8"), path)


def build_spec(type_name: str, options: dict[str, Any], base_dir: Path,
               **top_level: Any) -> ActionSpec:
    """One action with its core options (fetch, retry, max_concurrency), validated and built
    exactly as from actions.yaml (ConfigError if bad)."""
    config = build_config({"actions": {"under-test": {"type": type_name, **options}},
                           **top_level}, base_dir)
    return config.actions["under-test"]


def build_action(type_name: str, options: dict[str, Any], base_dir: Path,
                 **top_level: Any) -> Action:
    """One action, validated and built exactly as from actions.yaml (ConfigError if bad)."""
    return build_spec(type_name, options, base_dir, **top_level).action


def attempt_once(spec: ActionSpec, delivery: Delivery) -> str | None:
    """One attempt as the deliverer makes it: the links under ``fetch:`` are fetched, then
    the action delivers. Raises what the action (or the fetch) raised."""
    from .deliver import perform

    return perform(spec, delivery)


def make_delivery(event: str | dict[str, Any] = "success", action: str = "under-test",
                  attempt: int = 1) -> Delivery:
    body = sample(event) if isinstance(event, str) else json.dumps(event).encode()
    return Delivery(id="dlv_test", event_id="evt_test", action=action, attempt=attempt,
                    event=json.loads(body), raw_body=body, received_at="2026-01-01T00:00:00.000Z")


def __getattr__(name: str) -> Any:
    """The relay runners and private databases live in testing_relay.py and are importable
    from here too; loaded on first use (they import the whole relay)."""
    if name in RELAY_HELPERS:
        from . import testing_relay

        return getattr(testing_relay, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


RELAY_HELPERS = ("LocalRelay", "RelayProcess", "pg_schema", "PrivateDatabase", "PrivateCluster",
                 "PG_BIN")
