"""Fixtures: a store URL for each backend, configs on disk, real relays and real sinks."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from suki_relay.cli.main import main
from suki_relay.config.check import sample
from suki_relay.store import Store, open_store
from suki_relay.testing import SECRET, Sink, SukiStandIn
from tests.support.relay import (
    LocalRelay,
    PrivateCluster,
    PrivateDatabase,
    RelayProcess,
    pg_schema,
)

PG_URL = os.environ.get("SUKI_RELAY_TEST_PG", "postgresql://127.0.0.1:5432/test")


def _pg_available() -> str | None:
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}"


PG_PROBLEM = _pg_available()


def _need_pg() -> None:
    """Skip without PostgreSQL; under CI (where it must be up) fail instead."""
    if PG_PROBLEM:
        if os.environ.get("CI"):
            pytest.fail(PG_PROBLEM)
        pytest.skip(PG_PROBLEM)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema on the machine's PostgreSQL, dropped afterwards."""
    _need_pg()
    with pg_schema(PG_URL) as url:
        yield url


@pytest.fixture
def private_db() -> Iterator[PrivateDatabase]:
    """A database of this test's own on the machine's PostgreSQL, which it may take down
    (``down()``/``up()``) without touching anyone else's; dropped afterwards."""
    _need_pg()
    with PrivateDatabase(PG_URL) as db:
        yield db


@pytest.fixture
def private_pg() -> Iterator[PrivateCluster]:
    """A PostgreSQL server of this test's own, started, which it may stop and start."""
    try:
        cluster = PrivateCluster()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return "sqlite:///relay.db"
    return str(request.getfixturevalue("pg_url"))


FAST_DELIVERY = {"lease_seconds": 2, "poll_seconds": 0.2, "shutdown_seconds": 5, "threads": 4}


@pytest.fixture
def write_config(tmp_path: Path, store_url: str) -> Callable[..., Path]:
    """Write actions.yaml with a test secret, the parametrised store and fast delivery."""

    def write(config: dict[str, Any] | None = None, name: str = "actions.yaml") -> Path:
        full: dict[str, Any] = {"receiver": {"secrets": [SECRET]}, "store": store_url,
                                "delivery": dict(FAST_DELIVERY)}
        full.update(config or {})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(full, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture
def relay() -> Iterator[Callable[..., RelayProcess]]:
    started: list[RelayProcess] = []

    def start(config_file: Path, run: bool = True, **kwargs: Any) -> RelayProcess:
        """``run=False``: not started yet, its URL known (a stand-in may need it first);
        the test calls ``start()``."""
        proc = RelayProcess(config_file, **kwargs)
        started.append(proc)
        return proc.start() if run else proc

    yield start
    for proc in started:
        proc.stop(timeout=15)


@pytest.fixture
def local_relay() -> Iterator[Callable[..., LocalRelay]]:
    """Start relays in this process (see LocalRelay); stopped when the test ends."""
    started: list[LocalRelay] = []

    def start(config_file: Path, **kwargs: Any) -> LocalRelay:
        relay = LocalRelay(config_file, **kwargs)
        started.append(relay)
        return relay

    yield start
    for relay in reversed(started):
        relay.stop()


class LogRecords(logging.Handler):
    """What the relay logged in this process, as (message, fields) pairs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), dict(getattr(record, "fields", {}))))

    def text(self) -> str:
        return "\n".join(f"{msg} {fields}" for msg, fields in self.lines)


@pytest.fixture
def relay_log() -> Iterator[LogRecords]:
    logger = logging.getLogger("suki_relay")
    handler, level = LogRecords(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def suki() -> Iterator[SukiStandIn]:
    """A stand-in for Suki's API on 127.0.0.1 (a module may override it with its own)."""
    with SukiStandIn() as fake:
        yield fake


@pytest.fixture
def sink() -> Iterator[Callable[..., Sink]]:
    made: list[Sink] = []

    def make(*args: Any, **kwargs: Any) -> Sink:
        s = Sink(*args, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def success_event(patient_id: str, **fields: Any) -> dict[str, Any]:
    """The success sample, for this patient (``additional_info.patient_id``) and with
    ``fields`` set at the top level."""
    payload = json.loads(sample("success"))
    payload["additional_info"]["patient_id"] = patient_id
    payload.update(fields)
    return payload


def run_cli(*args: str, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`suki-relay ARGS` as a user runs it, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "suki_relay.cli.main", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=60, env={**os.environ, **(env or {})})


def cli_here(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`suki-relay ARGS` run in this process (no interpreter to start): what it prints,
    and its exit status (argparse's usage errors included). An exception that the CLI
    would show as a traceback propagates, and fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or Path.cwd()), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(["suki-relay", *args], status, out.getvalue(),
                                       err.getvalue())


def check_fails(folder: Path, config: str) -> str:
    """`suki-relay check` on ``config`` saved as the folder's actions.yaml: it must fail
    with exit status 1 and a report, not a traceback. Returns the report."""
    (folder / "actions.yaml").write_text(config)
    result = cli_here("check", cwd=folder)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def http_action(url: str, **options: Any) -> dict[str, Any]:
    return {"type": "http", "url": url, "timeout_seconds": 5,
            "retry": {"initial_seconds": 0.2, "max_seconds": 1, "max_attempts": 5}, **options}


_OPENED: list[Store] = []


def open_test_store(url: str, base_dir: Path | None = None) -> Store:
    """A store for a test to look at; closed when the test ends."""
    store = open_store(url, base_dir)
    _OPENED.append(store)
    return store


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


def old_events(store: Store, hours: float = 2) -> tuple[str, str]:
    """One pending and one finished event received ``hours`` ago (outside any replay
    window, which prune keeps whatever it is asked), committed as the receiver commits
    them; their ids."""
    import time

    from suki_relay.store import NewEvent
    from suki_relay.testing import unique_body

    at = time.time() - hours * 3600
    pending = NewEvent("old:1", unique_body("failure"), 1, "failure", "s1", None, False,
                       ["failures"], ["ehr"], received_at=at)
    finished = NewEvent("old:2", unique_body("timeout"), 2, "timeout", "s2", None, False,
                        [], [], received_at=at)
    store.record([pending, finished])
    return pending.id, finished.id
