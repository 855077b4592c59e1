"""Group commit: concurrent requests share transactions, and each learns its own fate."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from suki_relay.record import recorder
from suki_relay.store import EventFilter, NewEvent, StoreUnavailable

from .conftest import open_test_store


def event(key: str) -> NewEvent:
    return NewEvent(key, b'{"status": "failure"}', 1, "failure", "s", "e", False, ["r"], ["a"])


def test_concurrent_records_are_all_committed_once(tmp_path: Path) -> None:
    store = open_test_store("sqlite:///r.db", tmp_path)
    commits = recorder(store)
    results: dict[str, list] = {}
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(40):
            key = f"k{(n * 40 + i) % 300}"  # 480 requests, 300 distinct: duplicates race
            r = commits.submit(event(key))
            with lock:
                results.setdefault(key, []).append(r)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 300
    for key, recorded in results.items():
        assert len({r.event_id for r in recorded}) == 1, key  # one event per request identity
        assert sum(not r.duplicate for r in recorded) == 1, key
    assert len(store.events(EventFilter(limit=1000))) == 300
    assert len(store.deliveries(limit=1000)) == 300


def test_a_failed_commit_fails_every_request_in_it(tmp_path: Path) -> None:
    store = open_test_store("sqlite:///r.db", tmp_path)
    commits = recorder(store)
    with sqlite3.connect(tmp_path / "r.db") as other:  # a real failure, from outside
        other.execute("DROP TABLE attempts")
        other.execute("DROP TABLE deliveries")
        other.execute("DROP TABLE events")
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            commits.submit(event(f"x{i}"))
        except StoreUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(errors) == 8  # nobody is told "accepted"
    with pytest.raises(StoreUnavailable):  # and the next request is not stuck behind them
        commits.submit(event("y"))


def test_the_sqlite_files_are_owner_only(tmp_path: Path) -> None:
    store = open_test_store("sqlite:///private/r.db", tmp_path)
    recorder(store).submit(event("k"))
    files = sorted(p.name for p in (tmp_path / "private").iterdir())
    assert "r.db" in files and "r.db-wal" in files
    for name in files:
        assert (tmp_path / "private" / name).stat().st_mode & 0o077 == 0, name
