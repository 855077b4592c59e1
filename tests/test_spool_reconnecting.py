"""While the database is down and a request is trying it again, the others spool at once
instead of queueing behind that attempt (a database that hangs on connect would otherwise
hold every request for connect_timeout); the request that finds it back still commits
(tests/test_spool.py)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder

from suki_relay import metrics, protocol
from suki_relay.receive.app import RelayApp
from suki_relay.serve.config_state import ConfigState
from suki_relay.store import open_store, pgpool
from suki_relay.store.spool import Spool
from suki_relay.testing import SECRET, build_config, unique_body, wait_until


class BlackHole:
    """A PostgreSQL that accepts connections and never answers: each attempt to connect
    lasts connect_timeout. Counts the attempts; holds their sockets until stopped."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0):
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted.append(conn)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.stop()


def post(app: RelayApp, body: bytes) -> tuple[int, dict[str, Any]]:
    environ = EnvironBuilder(path="/webhooks/notification", method="POST", data=body,
                             headers=protocol.signed_headers(SECRET, body)).get_environ()
    status: list[str] = []
    answer = b"".join(app(environ, lambda s, h: status.append(s)))
    return int(status[0].split()[0]), json.loads(answer)


def test_requests_spool_at_once_while_another_request_tries_the_database(
        tmp_path: Path, black_hole: BlackHole, monkeypatch: pytest.MonkeyPatch) -> None:
    # a request waits this long for a connection while the database is down (0.5 s as
    # shipped): long here, so that "answered while the other request still waits" does
    # not depend on how fast this machine is
    monkeypatch.setattr(pgpool, "PEER_WAIT_SECONDS", 10.0)
    # this app runs in the test process: its counts would add to other tests' metrics
    monkeypatch.setattr(metrics, "SPOOLED", metrics._OFF)
    monkeypatch.setattr(metrics, "count_request", lambda *args: None)
    url = f"postgresql://127.0.0.1:{black_hole.port}/test?connect_timeout=2"
    config = build_config({"store": url}, tmp_path)
    store = open_store(url, tmp_path, lazy=True)
    spool = Spool(tmp_path / "spool.db", 100)
    try:
        app = RelayApp(config, store, ConfigState(config.fingerprint), spool=spool)
        status, body = post(app, unique_body())  # finds the database down, spools
        assert (status, body.get("spooled")) == (200, True)
        first: dict[str, Any] = {}
        trying = threading.Thread(target=lambda: first.update(
            answer=post(app, unique_body())))
        attempts = len(black_hole.accepted)
        trying.start()  # this request tries the database again, and waits for it
        wait_until(lambda: len(black_hole.accepted) > attempts, 20,
                   message="the second request's attempt under way")
        status, body = post(app, unique_body())
        assert (status, body["status"], body.get("spooled")) == (200, "accepted", True)
        assert trying.is_alive(), "answered only after the other request's attempt ended"
        trying.join(30)
        assert first["answer"][0] == 200 and first["answer"][1]["spooled"] is True
        assert spool.summary()["spooled"] == 3  # each committed, none lost
    finally:
        spool.close()
        store.close()
