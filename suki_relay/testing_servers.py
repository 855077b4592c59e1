"""Stand-ins for what a relay talks to, as real servers on 127.0.0.1: a recording HTTP
target (Sink), a TCP server that sends what no HTTP library would (RawServer, drip),
and Suki's follow-up API (SukiStandIn). Importable from suki_relay.testing.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class StandIn:
    """What every stand-in shares: used in ``with``, it is stopped at the end. Each says
    how it stops."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


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
    drop: bool = False  # no answer at all: the connection is closed (after any delay)
    # instead of ``body``: written as made, until it ends or the client hangs up, then the
    # connection is closed (no Content-Length), so a huge body costs a chunk, not its size
    stream: Callable[[], Iterable[bytes]] | None = None


class Sink(StandIn):
    """A real local HTTP server. ``replies`` are used in order, then ``default`` forever.

    ``handler`` may instead decide each reply from the request. Requests are recorded
    before the reply (and its delay), so a stalled request is already visible. It stops
    itself after ``lifetime`` seconds (None: when stopped).
    """

    def __init__(self, default: Reply | None = None, replies: Iterable[Reply] = (),
                 handler: Callable[[Received], Reply] | None = None,
                 lifetime: float | None = 120.0, port: int = 0):
        self.default = default or Reply()
        self.replies = list(replies)
        self.handler = handler
        self.received: list[Received] = []
        self.active = 0
        self.max_active = 0
        self.completed = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._stopped = threading.Event()
        self._connections: set[socket.socket] = set()  # open, kept alive or mid-request
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with sink._lock:
                    sink._connections.add(self.connection)

            def finish(self) -> None:
                with sink._lock:
                    sink._connections.discard(self.connection)
                super().finish()

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                got = Received(self.command, self.path, dict(self.headers.items()),
                               self.rfile.read(length), time.time())
                reply = sink._reply(got)
                if reply.delay:
                    sink._release.wait(reply.delay)
                try:
                    if reply.drop:  # the request was read (and acted on): hang up
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    if reply.stream is not None:
                        self.send_header("Connection", "close")
                        self.end_headers()
                        self._stream(reply.stream())
                        return
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:  # the client hung up (its reply bound, its deadline), or
                    self.close_connection = True  # the sink stopped mid-reply
                finally:
                    with sink._lock:
                        sink.active -= 1
                        sink.completed += 1

            def _stream(self, chunks: Iterable[bytes]) -> None:
                self.close_connection = True
                try:
                    for chunk in chunks:
                        if sink._stopped.is_set():
                            break
                        self.wfile.write(chunk)
                except OSError:  # the client hung up (read enough): the stream ends
                    pass

            do_GET = do_POST = do_PUT = do_PATCH = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # a short poll: stop() returns within 50 ms (the default half second, per sink,
        # was most of the time a test with several sinks took)
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        self._timer = threading.Timer(lifetime if lifetime is not None else 0, self.stop)
        self._timer.daemon = True
        if lifetime is not None:
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
        """Stop as a server process does: no new connection is accepted, and every open
        one is closed, kept-alive ones included (a client then connects anew, and is
        refused)."""
        self._timer.cancel()
        self._release.set()
        self._stopped.set()
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)




def accept_until(listener: socket.socket, stopped: threading.Event, deadline: float | None,
                 handle: Callable[[socket.socket], None]) -> None:
    """Accept connections on ``listener`` (which has a short timeout), each handled on a
    thread of its own, until ``stopped`` is set or the monotonic ``deadline`` passes (then
    ``stopped`` is set); closes the listener. The stand-ins that speak raw TCP share it."""
    while not stopped.is_set():
        if deadline is not None and time.monotonic() > deadline:
            stopped.set()
            break
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            break
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
    listener.close()


class RawServer(StandIn):
    """A real local TCP server for replies no HTTP server would send. Each connection's
    request head (and a Content-Length body) is read, then ``script(sock, head, stopped)``
    writes whatever it likes (``head`` is the request line and headers, for a script that
    answers by path); it should return once ``stopped`` is set. One request per
    connection: a script that answers in full should say ``Connection: close``. Everything stops after
    ``lifetime`` seconds, or on stop(), so a test that waits forever fails instead.
    ``speaks_first``: no request is read, the script runs as soon as a client connects
    (``head`` is empty): a server that greets, as SMTP does."""

    def __init__(self, script: Callable[[socket.socket, bytes, threading.Event], None],
                 lifetime: float = 60.0, speaks_first: bool = False):
        self.script = script
        self.speaks_first = speaks_first
        self.stopped = threading.Event()
        self.requests = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        accept_until(self._listener, self.stopped, self._deadline, self._one)

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                if self.speaks_first:
                    self.requests += 1
                    self.script(conn, b"", self.stopped)
                    return
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                head, _, body = head.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                while len(body) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    body += data
                self.requests += 1
                self.script(conn, head, self.stopped)
            except OSError:
                return  # the client hung up: what these scripts are for

    def stop(self) -> None:
        self.stopped.set()
        self._thread.join(5)



# ---------------------------------------------------------------- Suki's API, stood in


NOTE = {"summary": [{"title": "Assessment", "content": "PHI-NOTE-TEXT stable angina",
                     "loinc_code": "51848-0"},
                    {"title": "Plan", "content": "PHI-NOTE-PLAN follow up in 2 weeks",
                     "loinc_code": "18776-5"}],
        "structured_data": [{"title": "Vitals", "data": {"bp": "120/80"}}]}
TRANSCRIPT = {"final_transcript": [{"transcript": "PHI-TRANSCRIPT hello doctor",
                                    "start_time": 0, "end_time": 1, "lang_id": "en"}]}


class SukiStandIn(StandIn):
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
                 partner_token: str = "pt-SECRET", lifetime: float | None = 120.0,
                 statuses: dict[str, str] | None = None,
                 default_status: str | None = "completed", status_delay: float = 0.0,
                 port: int = 0):
        self.content = NOTE if content is None else content
        self.statuses = dict(statuses or {})
        self.default_status = default_status
        self.status_delay = status_delay
        self.asked: dict[str, int] = {}
        self.partner_id, self.partner_token = partner_id, partner_token
        self.logins: list[dict[str, Any]] = []
        self.api_status: list[int] = []
        self.content_status: list[int] = []
        self.sink = Sink(handler=self.handle, lifetime=lifetime, port=port)
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
            found = self.statuses.get(session, self.default_status)
            if found is None:
                return Reply(404, b'{"error": "no such session"}')
            return Reply(200, json.dumps({"status": found}).encode(), delay=self.status_delay)
        if path.endswith("/structured-data"):
            return Reply(200, json.dumps({"structured_data": self.content.get(
                "structured_data", [])}).encode())
        return Reply(404, b"{}")

    def stop(self) -> None:
        self.sink.stop()



def drip(head: bytes, unit: bytes = b"x", every: float = 0.05
         ) -> Callable[[socket.socket, bytes, threading.Event], None]:
    """A RawServer script: send ``head``, then ``unit`` every ``every`` seconds, forever
    (until the server stops or the client hangs up)."""

    def script(sock: socket.socket, request: bytes, stopped: threading.Event) -> None:
        sock.sendall(head)
        while not stopped.wait(every):
            sock.sendall(unit)

    return script
