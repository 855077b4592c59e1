"""Test helpers for the relay and for plugin authors: real servers, real processes.

* :class:`Sink` - an HTTP server on 127.0.0.1 that records what it receives and answers
  as scripted (status sequence, delay, headers); stops itself after ``lifetime`` seconds.
* :class:`RawServer` - a TCP server on 127.0.0.1 that answers with raw bytes as scripted:
  a reply whose headers or body never end, or anything else HTTP libraries will not send.
* :class:`SukiStandIn` - Suki's follow-up API on 127.0.0.1 (login, content, transcript,
  status, structured data), for actions that ``fetch:``.
* :func:`build_action` - an action built through the registry and the config loader,
  validated exactly as actions.yaml would be; :func:`build_spec` the same with its core
  options (``fetch``, ``retry``), and :func:`attempt_once` one attempt as the deliverer
  makes it (links fetched first).
* :func:`make_delivery` - a Delivery for a sample or a payload of your own.
* :class:`RelayProcess` - a real gunicorn running the relay on a free local port.
* :func:`pg_schema` - a fresh schema on a PostgreSQL, as a store URL; dropped afterwards.
* :func:`post_signed`, :func:`wait_until`, :func:`in_thread`, :func:`free_port`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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


def in_thread(fn: Callable[[], Any], wait: float = 20.0) -> Any:
    """Run ``fn`` in a thread; fail if it is still running after ``wait`` seconds (a hung
    call is the bug these tests look for, and the test must end either way)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(wait)
    assert not thread.is_alive(), f"still running after {wait}s: the deadline did not hold"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def plant_netrc(monkeypatch: Any, home: Path) -> None:
    """A ~/.netrc with credentials for 127.0.0.1 and no proxy settings (through pytest's
    ``monkeypatch``): a test then shows that no request hands them to a target."""
    netrc = home / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password hunter2\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(home))
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


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


class RawServer:
    """A real local TCP server for replies no HTTP server would send. Each connection's
    request head (and a Content-Length body) is read, then ``script(sock, head, stopped)``
    writes whatever it likes (``head`` is the request line and headers, for a script that
    answers by path); it should return once ``stopped`` is set. One request per
    connection: a script that answers in full should say ``Connection: close``. Everything stops after
    ``lifetime`` seconds, or on stop(), so a test that waits forever fails instead."""

    def __init__(self, script: Callable[[socket.socket, bytes, threading.Event], None],
                 lifetime: float = 60.0):
        self.script = script
        self.stopped = threading.Event()
        self.requests = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            if time.monotonic() > self._deadline:
                self.stopped.set()
                break
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()
        self._listener.close()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
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

    def __enter__(self) -> RawServer:
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


def drip(head: bytes, unit: bytes = b"x", every: float = 0.05
         ) -> Callable[[socket.socket, bytes, threading.Event], None]:
    """A RawServer script: send ``head``, then ``unit`` every ``every`` seconds, forever
    (until the server stops or the client hangs up)."""

    def script(sock: socket.socket, request: bytes, stopped: threading.Event) -> None:
        sock.sendall(head)
        while not stopped.wait(every):
            sock.sendall(unit)

    return script


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


# ---------------------------------------------------------------- a real relay


class RelayProcess:
    """`suki-relay serve` (or plain gunicorn) on a free port, stopped by its PID only."""

    def __init__(self, config_file: Path, *, plain_gunicorn: bool = False, workers: int = 2,
                 threads: int = 4, env: dict[str, str] | None = None,
                 log_file: Path | None = None):
        self.config_file = config_file
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = log_file or config_file.parent / f"relay-{self.port}.log"
        self.plain = plain_gunicorn
        self.workers, self.threads = workers, threads
        self.env = {**os.environ, "SUKI_RELAY_CONFIG": str(config_file),
                    "PROMETHEUS_MULTIPROC_DIR": str(config_file.parent / f"prom-{self.port}"),
                    **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def webhook(self) -> str:
        return self.url + "/webhooks/notification"

    def start(self, wait: bool = True) -> RelayProcess:
        Path(self.env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(exist_ok=True)
        if self.plain:
            cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}",
                   "--workers", str(self.workers), "--no-control-socket",
                   "suki_relay.wsgi:app"]
        else:
            cmd = [sys.executable, "-m", "suki_relay.cli", "-c", str(self.config_file), "serve",
                   "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
                   "--threads", str(self.threads)]
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=self.env,
                                     cwd=self.config_file.parent, start_new_session=True)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                return requests.get(self.url + "/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, timeout, 0.1, "the relay to be ready")

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill9(self) -> None:
        """kill -9 the master and every worker it started, by PID."""
        if self.proc is None or self.proc.poll() is not None:
            return
        workers = self.worker_pids()
        for pid in [self.proc.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def pg_schema(url: str, prefix: str = "t") -> Iterator[str]:
    """A fresh, empty schema on the PostgreSQL at ``url``, as a store URL that uses it;
    the schema and everything in it is dropped afterwards."""
    import secrets

    import psycopg

    schema = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


class PrivateDatabase:
    """A database of its own on a PostgreSQL server, for tests that need an outage without
    touching anyone else's: ``down()`` refuses new connections to it and ends the open ones
    (of this database only), ``up()`` lets connections in again. Dropped by ``drop()``."""

    def __init__(self, server_url: str, prefix: str = "suki_outage"):
        import secrets

        self.server_url = server_url
        self.name = f"{prefix}_{secrets.token_hex(6)}"
        parts = urlsplit(server_url)
        self.url = urlunsplit(parts._replace(path=f"/{self.name}"))
        self._admin(f"CREATE DATABASE {self.name}")

    def _admin(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True, connect_timeout=10) as conn:
            for statement in statements:
                conn.execute(statement)

    def down(self) -> None:
        self._admin(f"ALTER DATABASE {self.name} WITH ALLOW_CONNECTIONS false",
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()")

    def up(self) -> None:
        self._admin(f"ALTER DATABASE {self.name} WITH ALLOW_CONNECTIONS true")

    def drop(self) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")

    def __enter__(self) -> PrivateDatabase:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.drop()


PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PrivateCluster:
    """A PostgreSQL server of its own (initdb + pg_ctl, run as user ``postgres``) on a free
    port with its data in a temporary folder: a test can stop and start it, as a real
    database restart, without touching the machine's server. ``remove()`` stops it and
    deletes its folder. Needs root (to run as ``postgres``) and the binaries in PG_BIN."""

    def __init__(self, bin_dir: Path = PG_BIN, user: str = "postgres"):
        import shutil
        import tempfile

        if not (bin_dir / "pg_ctl").exists() or os.geteuid() != 0 or not shutil.which("runuser"):
            raise RuntimeError(f"needs root, runuser and PostgreSQL binaries in {bin_dir}")
        self.bin_dir, self.user = bin_dir, user
        self.folder = Path(tempfile.mkdtemp(prefix="suki-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        shutil.chown(self.folder, user)
        self.folder.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.folder}'\nfsync = off\n"
                       "shared_buffers = 16MB\nmax_connections = 40\n")

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        subprocess.run(["runuser", "-u", self.user, "--", str(self.bin_dir / tool), *args],
                       check=True, capture_output=True, timeout=timeout)

    def start(self) -> PrivateCluster:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-w",
                  "-t", "30", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def remove(self) -> None:
        import shutil

        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30",
                      "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PrivateCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.remove()
