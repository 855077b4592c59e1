"""A PostgreSQL outage under a real gunicorn relay: nothing refused, nothing lost or doubled.

Outages are made on a private database (connections refused and ended), never on the
machine's shared server or its `test` database. A real stop and start of a (private)
server, with and without the spool, is in test_cluster.py.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import requests
import yaml

from suki_relay.testing import (
    SECRET,
    Sink,
    post_signed,
    unique_body,
    wait_until,
)

from ..conftest import FAST_DELIVERY, http_action, open_test_store, run_cli


def write_config(tmp_path: Path, store: str, target: str, **top_level: Any) -> Path:
    path = tmp_path / "actions.yaml"
    path.write_text(yaml.safe_dump({
        "receiver": {"secrets": [SECRET]}, "store": store, "delivery": FAST_DELIVERY,
        "actions": {"target": http_action(target, max_concurrency=8)},
        "rules": [{"name": "all", "do": ["target"]}], **top_level}))
    return path


def delivered_once(target: Sink, accepted: list[str], store_url: str) -> None:
    """Every accepted event delivered, each exactly once, and nothing left to do."""
    wait_until(lambda: len({g.headers["X-Suki-Relay-Event"] for g in target.received})
               >= len(accepted), timeout=60, message="every accepted event delivered")
    store = open_test_store(store_url)
    wait_until(lambda: all(d.state == "done" for d in store.deliveries(limit=1000)),
               timeout=30, message="no delivery left unfinished")
    counts = Counter(g.headers["X-Suki-Relay-Event"] for g in target.received)
    assert sorted(counts) == sorted(accepted)
    assert set(counts.values()) == {1}, counts


def test_twenty_notifications_during_an_outage(tmp_path: Path, private_db, relay,
                                               sink) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    cfg = write_config(tmp_path, private_db.url, target.url)
    node = relay(cfg)
    accepted = [post_signed(node.webhook, unique_body()).json()["event_id"] for _ in range(3)]
    # (a delivery under way when the database goes may be attempted again by another
    # process once its lease runs out: at-least-once, and not what this test is about)
    wait_until(lambda: len(target.received) == 3, message="the events before the outage")
    time.sleep(0.3)  # their attempts recorded
    private_db.down()
    answers: list[requests.Response] = []

    def send(n: int) -> None:
        for _ in range(n):
            answers.append(post_signed(node.webhook, unique_body()))

    senders = [threading.Thread(target=send, args=(5,)) for _ in range(4)]
    for t in senders:
        t.start()
    for t in senders:
        t.join(60)
    assert [a.status_code for a in answers] == [200] * 20
    assert all(a.json()["spooled"] for a in answers)
    spooled = [a.json()["event_id"] for a in answers]

    ready = requests.get(node.url + "/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {"status": "degraded", "store": "unavailable", "spooled": 20}
    metrics = requests.get(node.url + "/metrics", timeout=10).text
    assert "suki_relay_spool_events 20.0" in metrics
    assert "suki_relay_spooled_total 20.0" in metrics  # summed across both workers
    listed = run_cli("-c", str(cfg), "spool", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(r["id"] for r in json.loads(listed.stdout)) == sorted(spooled)
    shown = run_cli("-c", str(cfg), "show", spooled[0])
    assert shown.returncode == 0, shown.stderr
    assert "spooled" in shown.stdout and spooled[0] in shown.stdout
    assert "20 events waiting in this node's spool" in run_cli("-c", str(cfg), "events").stderr

    private_db.up()
    delivered_once(target, accepted + spooled, private_db.url)
    assert requests.get(node.url + "/readyz", timeout=10).json()["spooled"] == 0
    logs = node.logs()
    assert "store unavailable; spooling locally" in logs
    assert "store available again; spooling stopped" in logs or \
        "spooled events moved into the store" in logs


def test_kill_9_during_an_outage_loses_nothing(tmp_path: Path, private_db, relay,
                                               sink) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    cfg = write_config(tmp_path, private_db.url, target.url)
    node = relay(cfg)
    private_db.down()
    spooled = []
    for _ in range(10):
        resp = post_signed(node.webhook, unique_body())
        assert resp.status_code == 200 and resp.json()["spooled"]
        spooled.append(resp.json()["event_id"])
    node.kill9()
    private_db.up()
    relay(cfg)  # restarted, as after a crash
    delivered_once(target, spooled, private_db.url)


def test_a_worker_started_during_the_outage_moves_the_spool(tmp_path: Path, private_db, relay,
                                                            sink) -> None:  # type: ignore[no-untyped-def]
    """A receive-only node spools; it stops; `suki-relay worker` starts on the same node
    while the database is still down, and once it is back moves and delivers everything."""
    target = sink()
    cfg = write_config(tmp_path, private_db.url, target.url)
    receiver = relay(cfg, env={"SUKI_RELAY_DELIVER": "0"})
    private_db.down()
    spooled = [post_signed(receiver.webhook, unique_body()).json()["event_id"] for _ in range(3)]
    receiver.stop()
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "suki_relay.cli.main", "-c", str(cfg),
                                   "worker"], stdout=out, stderr=out, start_new_session=True)
    try:
        wait_until(lambda: worker.poll() is not None or "delivering from" in log.read_text(),
                   message="the worker to start")
        assert worker.poll() is None, log.read_text()  # started with the database down
        private_db.up()
        delivered_once(target, spooled, private_db.url)
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)


def test_a_table_locked_by_another_session_spools_within_seconds(
        tmp_path: Path, private_db, relay, sink) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL answers, but another session holds a lock the receiver's INSERT needs (an
    operator's LOCK TABLE or VACUUM FULL, a migration queued behind a long backup): the
    request's transaction is cut off after a few seconds, spooled and answered 200, not
    held until the lock goes (Suki would have given up); it moves in once the lock is gone,
    and the delivery under way meanwhile is recorded once, not taken over.
    A database of its own: a claim held up by the lock holds the claimers' advisory lock,
    which is the whole database's, and would hold up other tests' relays."""
    target = sink()
    pg_url = private_db.url
    node = relay(write_config(tmp_path, pg_url, target.url))
    accepted = [post_signed(node.webhook, unique_body()).json()["event_id"]]
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        try:
            resp = post_signed(node.webhook, unique_body(), timeout=15)
        finally:
            holder.execute("ROLLBACK")
    assert resp.status_code == 200 and resp.json()["spooled"], resp.text
    delivered_once(target, [*accepted, resp.json()["event_id"]], pg_url)


class StallingProxy:
    """A TCP proxy on 127.0.0.1 to the test's PostgreSQL that can stop passing bytes on
    (``stall()``) with every connection left open: a database that takes the query and
    never answers (a pooler such as PgBouncer holding it while the server restarts)."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.stopping = False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self.flowing.clear()

    def flow(self) -> None:
        self.flowing.set()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target, timeout=5)
            except TimeoutError:
                continue
            except OSError:
                return
            self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.2)
        while not self.stopping:
            try:
                data = src.recv(65536) if self.flowing.is_set() else None
            except TimeoutError:
                continue
            except OSError:
                break
            if data == b"":
                break
            while not self.flowing.wait(0.2):  # read while flowing, held while stalled
                if self.stopping:
                    return
            if data:
                try:
                    dst.sendall(data)
                except OSError:
                    break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.stopping = True
        self.flowing.set()
        self.listener.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


def test_a_database_that_takes_the_query_and_never_answers_spools(
        tmp_path: Path, pg_url: str, relay) -> None:  # type: ignore[no-untyped-def]
    """The connection stays open and the query is taken, but no answer comes (a pooler
    holding it while the server restarts, for two minutes by default; a peer gone without a
    word): the request's transaction, the check of its idle connection included, is cut
    off after a few seconds and the notification spooled and answered 200, not held for
    as long as the silence lasts. Once the database answers again it is moved in, once."""
    where = urlsplit(pg_url)
    proxy = StallingProxy((where.hostname or "127.0.0.1", where.port or 5432))
    proxied = urlunsplit(where._replace(netloc=f"127.0.0.1:{proxy.port}"))
    # receives only: nothing else uses the connection, which is idle when next taken
    node = relay(write_config(tmp_path, proxied, "http://127.0.0.1:9/"), workers=1,
                 env={"SUKI_RELAY_DELIVER": "0"})
    try:
        first = post_signed(node.webhook, unique_body()).json()["event_id"]
        time.sleep(2.5)  # idle long enough to be checked with a query when next taken
        proxy.stall()
        try:
            resp = post_signed(node.webhook, unique_body(), timeout=15)
        finally:
            proxy.flow()
        assert resp.status_code == 200 and resp.json()["spooled"], resp.text
        store = open_test_store(pg_url)
        ids = [first, resp.json()["event_id"]]
        wait_until(lambda: store.known(ids) == set(ids), message="the spooled event moved in")
        assert store.stats().events == 2
    finally:
        node.stop()
        proxy.stop()


def test_a_database_that_refuses_every_write_spools(tmp_path: Path, private_db, relay,
                                                    sink) -> None:  # type: ignore[no-untyped-def]
    """The database answers but refuses every write, the event even kept as malformed (a
    node that came back as a read-only standby after a failover): nothing can be committed
    there, so the spool takes the notification (it was answered 500, and lost); once
    writes are taken again it is moved in and delivered, once."""
    target = sink()
    node = relay(write_config(tmp_path, private_db.url, target.url), workers=1)
    accepted = [post_signed(node.webhook, unique_body()).json()["event_id"]]
    ends = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{private_db.name}' AND pid <> pg_backend_pid()")
    private_db._admin(f"ALTER DATABASE {private_db.name} SET default_transaction_read_only = on",
                      ends)  # its connections come back read-only
    try:
        resp = post_signed(node.webhook, unique_body())
    finally:
        private_db._admin(f"ALTER DATABASE {private_db.name} RESET default_transaction_read_only",
                          ends)
    assert resp.status_code == 200 and resp.json()["spooled"], resp.text
    delivered_once(target, [*accepted, resp.json()["event_id"]], private_db.url)
