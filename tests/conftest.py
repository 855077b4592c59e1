"""Fixtures: a store URL for each backend, configs on disk, real relays and real sinks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from suki_relay.store import Store, open_store
from suki_relay.testing import SECRET, RelayProcess, Sink, pg_schema

PG_URL = os.environ.get("SUKI_RELAY_TEST_PG", "postgresql://127.0.0.1:5432/test")


def _pg_available() -> str | None:
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}"


PG_PROBLEM = _pg_available()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema on the machine's PostgreSQL, dropped afterwards."""
    if PG_PROBLEM:
        if os.environ.get("CI"):
            pytest.fail(PG_PROBLEM)
        pytest.skip(PG_PROBLEM)
    with pg_schema(PG_URL) as url:
        yield url


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


def sqlite_config(folder: Path, config: dict[str, Any]) -> Path:
    """actions.yaml in ``folder`` with a test secret, fast delivery and the SQLite store
    relay.db, for tests about an action rather than a store."""
    full: dict[str, Any] = {"receiver": {"secrets": [SECRET]}, "store": "sqlite:///relay.db",
                            "delivery": dict(FAST_DELIVERY), **config}
    path = folder / "actions.yaml"
    path.write_text(yaml.safe_dump(full, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def relay() -> Iterator[Callable[..., RelayProcess]]:
    started: list[RelayProcess] = []

    def start(config_file: Path, **kwargs: Any) -> RelayProcess:
        proc = RelayProcess(config_file, **kwargs)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop(timeout=15)


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


def run_cli(*args: str, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`suki-relay ARGS` as a user runs it, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "suki_relay.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=60, env={**os.environ, **(env or {})})


def check_fails(folder: Path, config: str) -> str:
    """`suki-relay check` on ``config`` saved as the folder's actions.yaml: it must fail
    with exit status 1 and a report, not a traceback. Returns the report."""
    (folder / "actions.yaml").write_text(config)
    result = run_cli("check", cwd=folder)
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
