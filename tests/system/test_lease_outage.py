"""Two delivering processes through a database outage longer than a lease (on a private
database): the one that reaches the database first when it is back must not take over the
other's attempt under way; an owner killed during the outage is still taken over."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from suki_relay.store import NewEvent
from suki_relay.testing import SECRET, Reply, unique_body, wait_until

from ..conftest import http_action, open_test_store

LEASE = 4.0
DELIVERY = {"lease_seconds": LEASE, "poll_seconds": 0.2, "shutdown_seconds": 5, "threads": 2}


class Workers:
    """`suki-relay worker` processes on one config, each with its own log; stopped (and
    continued first, if stopped) when the test ends."""

    def __init__(self, cfg: Path):
        self.cfg = cfg
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str) -> subprocess.Popen[bytes]:
        log = self.cfg.parent / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "suki_relay.cli.main", "-c",
                                     str(self.cfg), "worker"], stdout=out, stderr=out,
                                    start_new_session=True)
        self.procs.append(proc)
        wait_until(lambda: proc.poll() is not None or "delivering from" in log.read_text(),
                   message=f"worker {name} to start")
        assert proc.poll() is None, log.read_text()
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def workers(tmp_path: Path, private_db) -> Iterator[Workers]:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "actions.yaml"
    cfg.write_text(yaml.safe_dump({
        "receiver": {"secrets": [SECRET]}, "store": private_db.url, "delivery": DELIVERY,
        "actions": {"target": http_action("http://127.0.0.1:9/unset", timeout_seconds=60)},
        "rules": [{"name": "all", "do": ["target"]}]}))
    made = Workers(cfg)
    yield made
    made.stop()


def aim(workers: Workers, url: str) -> None:
    config = yaml.safe_load(workers.cfg.read_text())
    config["actions"]["target"]["url"] = url
    workers.cfg.write_text(yaml.safe_dump(config))


def record_one(url: str) -> str:
    """One event planning one delivery, committed as the receiver commits it."""
    event = NewEvent(f"lease:{time.time_ns()}", unique_body(), 1, "failure", None, None, False,
                     ["all"], ["target"])
    open_test_store(url).record([event])
    return event.id


def database_now(url: str) -> float:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        assert row is not None
        return float(row[0])


def reached_since(url: str, since: float) -> bool:
    """Whether a claimer has reached the database since ``since`` (its clock)."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("SELECT seen_at FROM lease_clock").fetchone()
    except psycopg.Error:
        return False
    return row is not None and row[0] > since


def under_way_through_an_outage(private_db, workers: Workers, sink,  # type: ignore[no-untyped-def]
                                second_starts: str) -> tuple[object, subprocess.Popen[bytes],
                                                             subprocess.Popen[bytes], str]:
    """Worker A's attempt is under way when the database goes; the target answers during
    the outage, which lasts longer than the lease. Worker B is started before the outage
    or during it. Returns with the database still down and A's lease run out."""
    target = sink(default=Reply(200, delay=60.0))  # until the database is down
    aim(workers, target.url)
    first = workers.start("a")
    event_id = record_one(private_db.url)
    wait_until(lambda: target.active == 1, message="A's attempt under way")
    second = workers.start("b") if second_starts == "before" else None
    private_db.down()
    down_at = time.monotonic()
    target.release()
    wait_until(lambda: target.active == 0, message="the target's answer")
    if second is None:
        second = workers.start("b")  # it never reached the database
    time.sleep(max(0.0, down_at + LEASE + 1.0 - time.monotonic()))  # A's lease runs out
    return target, first, second, event_id


@pytest.mark.parametrize("second_starts", ["before", "during"])
def test_the_first_back_after_an_outage_takes_no_attempt_under_way_over(
        private_db, workers, sink, second_starts: str) -> None:  # type: ignore[no-untyped-def]
    """A is held (SIGSTOP) while the database comes back, so B reaches it first: B must
    not take over A's delivery and send it again; A, let go, records its attempt."""
    target, first, _, event_id = under_way_through_an_outage(private_db, workers, sink,
                                                             second_starts)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        up_at = database_now(private_db.server_url)
        private_db.up()
        wait_until(lambda: len(target.received) > 1 or reached_since(private_db.url, up_at),
                   timeout=30, message="B back at the database")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    store = open_test_store(private_db.url)
    wait_until(lambda: [d.state for d in store.deliveries(event_id=event_id)] == ["done"],
               timeout=30, message="the attempt recorded")
    time.sleep(1.0)  # a second attempt, if one were made, would have reached the target
    sent = len(target.received)  # (a count: a failure shows no payload)
    assert sent == 1
    (delivery,) = store.event(event_id).deliveries  # type: ignore[union-attr]
    assert [a.outcome for a in delivery.attempts] == ["ok"]


def test_an_owner_killed_during_the_outage_is_taken_over_after_it(
        private_db, workers, sink) -> None:  # type: ignore[no-untyped-def]
    """A dies (kill -9) while the database is down: once it is back, B takes A's delivery
    over (a lease later) and sends it again, the lost attempt recorded."""
    target, first, _, event_id = under_way_through_an_outage(private_db, workers, sink,
                                                             "before")
    first.kill()
    first.wait(10)
    private_db.up()
    store = open_test_store(private_db.url)
    wait_until(lambda: [d.state for d in store.deliveries(event_id=event_id)] == ["done"],
               timeout=30, message="the delivery taken over and done")
    sent = len(target.received)
    assert sent == 2
    (delivery,) = store.event(event_id).deliveries  # type: ignore[union-attr]
    assert [a.outcome for a in delivery.attempts] == ["lost", "ok"]
