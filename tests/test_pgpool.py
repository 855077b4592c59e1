"""PostgreSQL connections (store/pgpool.py) under load, after the database ended them, and
with file descriptors numbered above 1024."""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path

import psycopg
import pytest

from suki_relay.errors import StoreUnavailable
from suki_relay.store import NewEvent, open_store
from tests.support.relay import PrivateDatabase


def new(key: str) -> NewEvent:
    return NewEvent(key, b'{"status": "failure"}', 1, "failure", None, None, False, ["r"], ["a"])


def test_more_threads_than_connections_all_commit(pg_url: str) -> None:
    """Ordinary load: more threads than connections wait their turn, none is refused (the
    reason the pool has no max_waiting)."""
    store = open_store(pg_url + "&pool_size=2&pool_timeout=30")
    refused: list[BaseException] = []
    barrier = threading.Barrier(12)

    def record(n: int) -> None:
        barrier.wait(timeout=30)
        try:
            for i in range(5):
                store.record([new(f"t{n}-{i}")])
        except StoreUnavailable as exc:
            refused.append(exc)

    threads = [threading.Thread(target=record, args=(n,)) for n in range(12)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert refused == []
        assert store.stats().events == 60
    finally:
        store.close()


def test_connections_the_database_ended_are_replaced_at_once(private_db: PrivateDatabase) -> None:
    store = open_store(private_db.url + "?pool_size=4")
    try:
        threads = [threading.Thread(target=store.record, args=([new(f"warm{n}")],))
                   for n in range(4)]  # several idle connections in the pool
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        private_db.down()
        with pytest.raises(StoreUnavailable):
            store.record([new("during")])
        private_db.up()
        store.record([new("after")])  # the very next transaction commits
        assert store.stats().events == 5
    finally:
        store.close()


def test_a_connection_numbered_above_1024_is_used(pg_url: str, tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the file descriptor limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = []
    try:
        while not held or held[-1] < 1030:
            held.append(os.open(tmp_path, os.O_RDONLY))
        store = open_store(pg_url)
        try:
            fd = store.connections._current().getconn()  # type: ignore[attr-defined]
            assert fd.fileno() >= 1024
            store.connections._current().putconn(fd)  # type: ignore[attr-defined]
            for n in range(3):  # each takes the idle connection and checks it first
                store.record([new(f"k{n}")])
            assert store.stats().events == 3
        finally:
            store.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_url_value_with_a_space_reaches_libpq_as_written(pg_url: str) -> None:
    """libpq's ``options`` as its documentation writes them, ``-c name=value`` (a space,
    %20 in the URL): passed on with the space, not as ``+`` (which libpq does not read as
    a space, so every connection failed and the store looked unreachable)."""
    url = pg_url.replace("options=-csearch_path", "options=-c%20search_path")
    assert url != pg_url
    store = open_store(url)
    try:
        store.record([new("spaced")])
        assert store.stats().events == 1
    finally:
        store.close()
    with psycopg.connect(pg_url) as conn:  # in the schema the URL names
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
