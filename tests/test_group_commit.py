"""Group commit: concurrent callers share transactions, and each learns its own fate."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from suki_relay.record import recorder
from suki_relay.store import EventFilter, NewEvent, StoreUnavailable
from suki_relay.store.group_commit import MAX_BATCH, GroupCommit

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
    with closing(sqlite3.connect(tmp_path / "r.db")) as other:  # a real failure, from outside
        for table in ("attempts", "deliveries", "events"):
            other.execute(f"DROP TABLE {table}")
        other.commit()
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


def test_callers_arriving_while_a_commit_runs_share_the_next_one() -> None:
    """Each caller gets its own result; those that queued behind a running batch are
    committed together, in order, at most MAX_BATCH at a time."""
    batches: list[list[int]] = []
    first_running, go_on = threading.Event(), threading.Event()
    exclusive_calls = []

    def batch(items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            first_running.set()
            assert go_on.wait(30)
        return [i * 10 for i in items]

    class Lock:
        def __enter__(self) -> None:
            exclusive_calls.append(1)

        def __exit__(self, *exc: object) -> None:
            pass

    commits: GroupCommit[int, int] = GroupCommit(batch, Lock)
    results: dict[int, int] = {}

    def submit(i: int) -> None:
        results[i] = commits.submit(i)

    leader = threading.Thread(target=submit, args=(0,))
    leader.start()
    assert first_running.wait(30)
    queued = [threading.Thread(target=submit, args=(i,)) for i in range(1, MAX_BATCH + 6)]
    for t in queued:
        t.start()
    deadline = time.monotonic() + 30
    while len(commits._queue) < len(queued) and time.monotonic() < deadline:
        time.sleep(0.01)
    go_on.set()
    for t in [leader, *queued]:
        t.join(30)
    assert results == {i: i * 10 for i in range(len(queued) + 1)}
    assert batches[0] == [0]
    assert [len(b) for b in batches[1:]] == [MAX_BATCH, 5]  # two commits for 133 callers
    assert sorted(i for b in batches for i in b) == list(range(len(queued) + 1))
    assert len(exclusive_calls) == len(batches)


def test_the_sqlite_files_are_owner_only(tmp_path: Path) -> None:
    store = open_test_store("sqlite:///private/r.db", tmp_path)
    recorder(store).submit(event("k"))
    files = sorted(p.name for p in (tmp_path / "private").iterdir())
    assert "r.db" in files and "r.db-wal" in files
    for name in files:
        assert (tmp_path / "private" / name).stat().st_mode & 0o077 == 0, name
