"""A worker boots whatever its store or spool say (issue 21, item 1), and readiness tells
the truth (item 3).

A real PostgreSQL server of the test's own is stopped and started; gunicorn replaces
workers while it is down (a worker killed, or ended by ``max_requests``). Every worker
must boot, answer 503 while nothing can commit, say why in /readyz, log it at ERROR once
per change, and take notifications again by itself once the database is back.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from suki_relay.testing import SECRET, post_signed, unique_body, wait_until
from tests.support.relay import RelayProcess

from ..conftest import FAST_DELIVERY, http_action, open_test_store

NOT_SQLITE = b"this is not an SQLite database file, and never was\n" * 100


def write_config(tmp_path: Path, store: str, target: str, **top_level: Any) -> Path:
    path = tmp_path / "actions.yaml"
    path.write_text(yaml.safe_dump({
        "receiver": {"secrets": [SECRET]}, "store": store, "delivery": FAST_DELIVERY,
        "actions": {"target": http_action(target)},
        "rules": [{"name": "all", "do": ["target"]}], **top_level}))
    return path


def readyz(node: RelayProcess) -> requests.Response:
    return requests.get(node.url + "/readyz", timeout=10)


def error_lines(node: RelayProcess, text: str) -> list[str]:
    return [line for line in node.logs().splitlines() if " error " in line and text in line]


def boots_and_recovers(node: RelayProcess, cluster: Any, target: Any) -> None:
    """With the database down: 503s and an honest /readyz; then up: accepted, delivered."""
    answer = post_signed(node.webhook, unique_body())
    assert answer.status_code == 503, answer.text
    ready = readyz(node)
    assert ready.status_code == 503
    assert ready.json()["error"] == "store_unavailable"
    assert ready.json()["store"].startswith("postgresql")
    assert ready.json()["spool"] == "disabled"
    cluster.start()
    wait_until(lambda: readyz(node).status_code == 200, timeout=30,
               message="ready once the database is back")
    accepted = post_signed(node.webhook, unique_body())
    assert accepted.status_code == 200 and accepted.json()["status"] == "accepted"
    wait_until(lambda: any(r.headers["X-Suki-Relay-Event"] == accepted.json()["event_id"]
                           for r in target.received), timeout=30, message="delivered")
    assert node.proc is not None and node.proc.poll() is None
    assert "Worker failed to boot" not in node.logs()
    assert "Traceback" not in node.logs()


@pytest.mark.parametrize("plain", [False, True], ids=["serve", "plain-gunicorn"])
def test_a_worker_that_restarts_during_an_outage_boots(tmp_path: Path, private_pg, relay,
                                                       sink, plain: bool) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    cfg = write_config(tmp_path, private_pg.url, target.url, spool={"enabled": False})
    # plain gunicorn: each worker ends after 10 requests and is replaced (max_requests)
    node = relay(cfg, plain_gunicorn=plain, gunicorn_args=("--max-requests", "10"))
    assert post_signed(node.webhook, unique_body()).status_code == 200
    private_pg.stop()
    before = set(node.worker_pids())
    if not plain:  # serve: a worker dies (a crash, the worker timeout) and is replaced
        os.kill(sorted(before)[0], signal.SIGKILL)
    else:  # until a worker has served its 10 and been replaced (each refusal in a new
        # worker waits for the database longer: not one more than needed)
        for _ in range(25):
            assert post_signed(node.webhook, unique_body()).status_code == 503
            if set(node.worker_pids()) - before:
                break
    wait_until(lambda: len(set(node.worker_pids()) - before) >= 1 and len(
        node.worker_pids()) == 2, timeout=30, message="a worker replaced during the outage")
    node.wait_ready(probe="/healthz")
    wait_until(lambda: error_lines(node, "notifications cannot be committed"), timeout=10,
               message="the outage logged at ERROR")
    boots_and_recovers(node, private_pg, target)


@pytest.mark.parametrize("plain", [False, True], ids=["serve", "plain-gunicorn"])
def test_the_relay_starts_while_the_database_is_down(tmp_path: Path, private_pg, sink,
                                                     plain: bool) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    cfg = write_config(tmp_path, private_pg.url, target.url, spool={"enabled": False})
    private_pg.stop()
    node = RelayProcess(cfg, plain_gunicorn=plain)
    try:
        node.start(wait=False)
        node.wait_ready(probe="/healthz")
        boots_and_recovers(node, private_pg, target)
        # once per change, per worker: not once per request or probe
        assert len(error_lines(node, "notifications cannot be committed")) <= 2
        assert "notifications can be committed again" in node.logs()
    finally:
        node.stop(timeout=15)


@pytest.mark.parametrize("plain", [False, True], ids=["serve", "plain-gunicorn"])
def test_an_unreadable_spool_file_does_not_stop_the_node(tmp_path: Path, pg_url: str, relay,
                                                         sink, plain: bool) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    cfg = write_config(tmp_path, pg_url, target.url)
    (tmp_path / "suki-relay-spool.db").write_bytes(NOT_SQLITE)
    node = relay(cfg, plain_gunicorn=plain)  # ready: the database commits
    accepted = post_signed(node.webhook, unique_body())
    assert accepted.status_code == 200 and accepted.json()["status"] == "accepted"
    ready = readyz(node).json()
    assert ready["status"] == "ready" and ready["spool"].startswith("sqlite")
    assert ready["spooled"] == "unavailable"
    wait_until(lambda: error_lines(node, "spool unavailable"), timeout=10,
               message="the spool's problem logged at ERROR")
    assert (tmp_path / "suki-relay-spool.db").read_bytes() == NOT_SQLITE  # left as found
    event = open_test_store(pg_url).event(accepted.json()["event_id"])
    assert event is not None


def test_readyz_is_503_when_the_spool_cannot_write_either(tmp_path: Path, private_db, relay,
                                                          sink) -> None:  # type: ignore[no-untyped-def]
    """A full disk under the spool while the database is down: every post gets 503, and
    so must /readyz (a write that changes nothing commits even on a full disk)."""
    target = sink()
    cfg = write_config(tmp_path, private_db.url, target.url)
    node = relay(cfg, workers=1)
    assert readyz(node).json()["status"] == "ready"
    private_db.down()
    time.sleep(1.1)  # readiness is asked again at most every second
    assert readyz(node).json()["status"] == "degraded"
    [worker] = node.worker_pids()
    files = [p for p in tmp_path.glob("suki-relay-spool.db*") if p.is_file()]
    room = max(p.stat().st_size for p in files) + 256 * 1024
    resource.prlimit(worker, resource.RLIMIT_FSIZE, (room, room))  # the disk is full
    answers = []
    for size in (30_000, 3_000, 0):  # fill it up to the last page
        for _ in range(100):
            answers.append(post_signed(node.webhook, unique_body(padding="x" * size)))
            if answers[-1].status_code == 503:
                break
    assert answers[-1].status_code == 503, [a.status_code for a in answers]
    assert 200 in {a.status_code for a in answers}  # the spool took some
    # the probe writes a page, as spooling does: the last pages it finds fill up at once
    [ready] = wait_until(lambda: [r for r in [readyz(node)] if r.status_code == 503],
                         timeout=15, message="/readyz to say nothing can take a notification")
    assert post_signed(node.webhook, unique_body()).status_code == 503
    assert ready.json()["store"].startswith("postgresql")
    assert ready.json()["spool"].startswith("sqlite")


def test_readyz_is_503_when_the_sqlite_store_cannot_write(tmp_path: Path, relay,
                                                          sink) -> None:  # type: ignore[no-untyped-def]
    """The SQLite store's readiness probe commits a page, as a notification does: on a
    disk that takes no more writes, /readyz says the store cannot commit, as every post
    finds; once the disk takes writes again, it is ready again by itself."""
    target = sink()
    cfg = write_config(tmp_path, "sqlite:///relay.db", target.url, spool={"enabled": False})
    node = relay(cfg, workers=1)
    assert post_signed(node.webhook, unique_body()).status_code == 200
    assert readyz(node).json()["status"] == "ready"
    [worker] = node.worker_pids()
    # no file takes another byte (the soft limit only: it can be lifted again)
    resource.prlimit(worker, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
    try:
        assert post_signed(node.webhook, unique_body()).status_code == 503
        [ready] = wait_until(lambda: [r for r in [readyz(node)] if r.status_code == 503],
                             timeout=15, message="/readyz to say the store cannot commit")
        assert ready.json()["error"] == "store_unavailable"
        assert ready.json()["store"].startswith("sqlite: ")
        assert ready.json()["spool"] == "disabled"
    finally:
        unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.prlimit(worker, resource.RLIMIT_FSIZE, unlimited)
    wait_until(lambda: readyz(node).status_code == 200, timeout=15,
               message="ready again once the disk takes writes")
    assert post_signed(node.webhook, unique_body()).status_code == 200
