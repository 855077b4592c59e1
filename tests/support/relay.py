"""Running the relay in a test: in this process (LocalRelay), or as a real gunicorn
(RelayProcess) for what needs a process (signals, kill -9, reload, several workers);
and PostgreSQL for its store: a fresh schema (pg_schema), a database of its own that can
be taken down (PrivateDatabase), a server of its own that can be restarted
(PrivateCluster). Importable from suki_relay.testing as well.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from werkzeug.test import Client, TestResponse

from suki_relay import protocol
from suki_relay.testing import SECRET, free_port, wait_until


class LocalRelay:
    """The relay's WSGI app in this process, with its delivery threads (unless
    ``deliver=False``), spoken to through werkzeug's test Client: no server, no fork.
    ``stop()`` stops its threads and closes its store."""

    def __init__(self, config_file: Path, deliver: bool = True):
        from suki_relay.config.load import load_config
        from suki_relay.serve.assemble import assemble

        self.config = load_config(str(config_file))
        self.app = assemble(self.config, deliver)  # as each gunicorn worker does
        self.app.process.start()  # as gunicorn's post_worker_init hook does
        self.store, self.deliverer = self.app.store, self.app.deliverer
        self.client = Client(self.app)
        self.path = self.config.receiver.path

    def post(self, body: bytes, headers: dict[str, str], **kwargs: Any) -> TestResponse:
        return self.client.post(self.path, data=body, headers=headers, **kwargs)

    def post_signed(self, body: bytes, secret: str = SECRET, now: float | None = None,
                    headers: dict[str, str] | None = None) -> TestResponse:
        return self.post(body, {**protocol.signed_headers(secret, body, now), **(headers or {})})

    def accept(self, body: bytes) -> str:
        """Post ``body`` signed; it must be accepted. Its event id."""
        resp = self.post_signed(body)
        assert resp.status_code == 200 and resp.json["status"] == "accepted", resp.get_data()
        return str(resp.json["event_id"])

    def stop(self) -> None:
        self.app.process.stop(timeout=5)  # as gunicorn's worker_exit hook does


class RelayProcess:
    """`suki-relay serve` (or plain gunicorn) on a free port, stopped by its PID only."""

    def __init__(self, config_file: Path, *, plain_gunicorn: bool = False, workers: int = 2,
                 threads: int = 4, env: dict[str, str] | None = None,
                 log_file: Path | None = None, gunicorn_args: tuple[str, ...] = ()):
        self.config_file = config_file
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = log_file or config_file.parent / f"relay-{self.port}.log"
        self.plain = plain_gunicorn
        self.workers, self.threads = workers, threads
        self.gunicorn_args = gunicorn_args  # more flags for plain gunicorn
        # plain gunicorn gets no help: its workers find their shared folder by themselves
        # (under TMPDIR, here the test's folder)
        helped = ({"TMPDIR": str(config_file.parent)} if plain_gunicorn else
                  {"PROMETHEUS_MULTIPROC_DIR": str(config_file.parent / f"prom-{self.port}")})
        self.env = {**os.environ, "SUKI_RELAY_CONFIG": str(config_file), **helped, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def webhook(self) -> str:
        return self.url + "/webhooks/notification"

    def start(self, wait: bool = True) -> RelayProcess:
        if self.env.get("PROMETHEUS_MULTIPROC_DIR"):
            Path(self.env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(exist_ok=True)
        if self.plain:
            cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}",
                   "--workers", str(self.workers), "--no-control-socket",
                   *self.gunicorn_args, "suki_relay.wsgi:app"]
        else:
            cmd = [sys.executable, "-m", "suki_relay.cli.main", "-c", str(self.config_file), "serve",
                   "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
                   "--threads", str(self.threads)]
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=self.env,
                                     cwd=self.config_file.parent, start_new_session=True)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0, probe: str = "/readyz") -> None:
        """Until ``probe`` answers 200 (``/healthz``: up, whether or not it can commit)."""
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                return requests.get(self.url + probe, timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, timeout, 0.1, f"the relay to answer {probe}")

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill9(self) -> None:
        """kill -9 the master and every worker it started, by PID; back once all are gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        workers = self.worker_pids()
        for pid in [self.proc.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        wait_until(lambda: not any(_alive(pid) for pid in workers), 10, 0.05,
                   "every worker gone")

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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


def _pg_bin() -> Path:
    """The PostgreSQL server binaries of this machine: pg_config's, else the newest under
    /usr/lib/postgresql (Debian's layout, one folder per major version)."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                    check=True, timeout=10).stdout.strip())
        if (found / "initdb").exists():
            return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return versions[-1] if versions else Path("/usr/lib/postgresql/bin")


PG_BIN = _pg_bin()


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
