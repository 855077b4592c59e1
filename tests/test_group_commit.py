"""Group commit: concurrent callers share transactions, each learns its own fate, and a
failure is contained (every caller gets an answer, one bad item fails only itself)."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest

from suki_relay.receive.record import commit, recorder
from suki_relay.store import EventFilter, NewEvent, Recorded, StoreUnavailable
from suki_relay.store.group_commit import MAX_BATCH, GroupCommit
from suki_relay.testing import wait_until

from .conftest import open_test_store


def event(key: str, session_id: str = "s") -> NewEvent:
    return NewEvent(key, b'{"status": "failure"}', 1, "failure", session_id, "e", False,
                    ["r"], ["a"])


def test_concurrent_records_are_all_committed_once(store_url: str, tmp_path: Path) -> None:
    """On both backends (PostgreSQL's batches wait for requests coming together)."""
    store = open_test_store(store_url, tmp_path)
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


def test_callers_coming_together_wait_for_each_other() -> None:
    """A leader with another caller queued behind it waits (gather_seconds) for more: the
    callers arriving meanwhile share its batch, and a full batch goes at once."""
    batches: list[list[int]] = []
    first_running, go_on = threading.Event(), threading.Event()

    def batch(items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            first_running.set()
            assert go_on.wait(30)
        return items

    commits: GroupCommit[int, int] = GroupCommit(batch, nullcontext, gather_seconds=60.0)
    threads = [threading.Thread(target=commits.submit, args=(0,))]
    threads[0].start()
    assert first_running.wait(30)
    threads += [threading.Thread(target=commits.submit, args=(i,)) for i in (1, 2)]
    for t in threads[1:]:
        t.start()
    wait_until(lambda: len(commits._queue) == 2, 10, 0.01, "two queued")
    go_on.set()  # the next leader finds two queued, and waits for more
    wait_until(lambda: batches == [[0]] and not threads[0].is_alive(), 10, 0.01,
               "the first batch done")
    later = [threading.Thread(target=commits.submit, args=(i,))
             for i in range(3, MAX_BATCH + 1)]  # the queue fills up: no waiting out 60 s
    for t in later:
        t.start()
    for t in threads + later:
        t.join(30)
    assert not any(t.is_alive() for t in threads + later)
    assert [sorted(b) for b in batches] == [[0], list(range(1, MAX_BATCH + 1))]


def test_callers_one_at_a_time_never_wait() -> None:
    """A caller alone, after a batch of one, is committed at once, whatever gather_seconds."""
    batches: list[list[int]] = []

    def batch(items: list[int]) -> list[int]:
        batches.append(items)
        return items

    commits: GroupCommit[int, int] = GroupCommit(batch, nullcontext, gather_seconds=60.0)
    for i in range(5):
        caller = threading.Thread(target=commits.submit, args=(i,))
        caller.start()
        caller.join(20)  # a wait of gather_seconds would outlast this
        assert not caller.is_alive()
    assert batches == [[0], [1], [2], [3], [4]]


@pytest.mark.parametrize("leaders", [1, 2])
def test_a_second_batch_commits_while_the_first_waits(leaders: int) -> None:
    """With two leaders (PostgreSQL: a batch spends its time waiting for the server), a
    request arriving while a batch is under way commits in a batch of its own meanwhile;
    with one (SQLite), it waits for that batch. No batch is ever empty."""
    batches: list[list[int]] = []
    first_running, go_on = threading.Event(), threading.Event()

    def batch(items: list[int]) -> list[int]:
        batches.append(items)
        if items == [0]:
            first_running.set()
            assert go_on.wait(30)
        return items

    commits: GroupCommit[int, int] = GroupCommit(batch, nullcontext, leaders=leaders)
    first = threading.Thread(target=commits.submit, args=(0,))
    first.start()
    assert first_running.wait(30)
    later = [threading.Thread(target=commits.submit, args=(i,)) for i in (1, 2, 3)]
    for t in later:
        t.start()
        time.sleep(0.05)
    if leaders == 2:
        for t in later:
            t.join(30)
            assert not t.is_alive()  # committed beside the first batch, still under way
        assert first.is_alive()
    else:
        time.sleep(0.2)
        assert all(t.is_alive() for t in later)  # queued behind the first batch
    go_on.set()
    for t in [first, *later]:
        t.join(30)
        assert not t.is_alive()
    assert sorted(x for b in batches for x in b) == [0, 1, 2, 3]
    assert all(batches)
    assert not commits._leading and not commits._gathering and not commits._queue


def test_the_sqlite_files_are_owner_only(tmp_path: Path) -> None:
    store = open_test_store("sqlite:///private/r.db", tmp_path)
    recorder(store).submit(event("k"))
    files = sorted(p.name for p in (tmp_path / "private").iterdir())
    assert "r.db" in files and "r.db-wal" in files
    for name in files:
        assert (tmp_path / "private" / name).stat().st_mode & 0o077 == 0, name


def run_all(submit, items: list) -> dict[int, object]:  # type: ignore[no-untyped-def]
    """Submit each item from a thread of its own; what each got (result or exception)."""
    got: dict[int, object] = {}

    def work(i: int) -> None:
        try:
            got[i] = submit(items[i])
        except BaseException as exc:
            got[i] = exc

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return got


def test_when_the_write_lock_cannot_be_entered_everyone_is_answered(tmp_path: Path) -> None:
    store = open_test_store("sqlite:///r.db", tmp_path)
    commits = recorder(store)
    lock_file = tmp_path / "r.db.lock"
    lock_file.unlink()
    lock_file.mkdir()  # a real failure: new threads cannot open the writer lock
    got = run_all(commits.submit, [event(f"k{i}") for i in range(8)])
    assert len(got) == 8, "a request was left waiting"
    assert all(isinstance(g, StoreUnavailable) for g in got.values()), got

    shutil.rmtree(lock_file)  # the store is back: the next requests start afresh
    got = run_all(commits.submit, [event(f"later{i}") for i in range(4)])
    assert len(got) == 4, "a request was left waiting after the store came back"
    assert all(isinstance(g, Recorded) and not g.duplicate for g in got.values()), got


def test_a_leader_that_cannot_enter_does_not_strand_those_queued_behind_it() -> None:
    """The injected failure comes while others are queued behind the leader."""
    arrived, release = threading.Event(), threading.Event()
    fail = [True]

    @contextmanager
    def exclusive() -> Iterator[None]:
        if fail[0]:
            arrived.set()
            release.wait(10)
            fail[0] = False
            raise OSError(24, "Too many open files")
        yield

    commits: GroupCommit[int, int] = GroupCommit(lambda xs: [x * 2 for x in xs], exclusive)
    got: dict[int, object] = {}
    first = threading.Thread(target=lambda: got.update(
        {0: _outcome(commits.submit, 0)}), daemon=True)
    first.start()
    assert arrived.wait(10)
    others = [threading.Thread(target=lambda i=i: got.update({i: _outcome(commits.submit, i)}),
                               daemon=True) for i in range(1, 6)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert sorted(got) == [0, 1, 2, 3, 4, 5], "a caller was left waiting"
    assert all(isinstance(g, StoreUnavailable) or g == 2 * i for i, g in got.items()), got
    assert isinstance(got[0], StoreUnavailable)
    assert commits.submit(21) == 42  # and the next caller starts afresh


def _outcome(submit, item):  # type: ignore[no-untyped-def]
    try:
        return submit(item)
    except BaseException as exc:
        return exc


def test_one_bad_item_fails_only_itself(store_url: str, tmp_path: Path) -> None:
    """A batch holding an event the store refuses (a lone surrogate: not UTF-8) commits
    every other event of the batch, on both backends."""
    store = open_test_store(store_url, tmp_path)
    gate = threading.Event()

    @contextmanager
    def exclusive() -> Iterator[None]:  # holds the first leader until all have queued
        gate.wait(10)
        with store.exclusive():
            yield

    commits = GroupCommit(store.record, exclusive)
    batch_sizes: list[int] = []
    record = store.record

    def counted(events: list[NewEvent]) -> list[Recorded]:
        batch_sizes.append(len(events))
        return record(events)

    commits.batch = counted
    items = [event(f"good{i}") for i in range(6)] + [event("bad", "\ud800 bad")]
    threads_done = {}

    def go() -> None:
        threads_done.update(run_all(commits.submit, items))

    runner = threading.Thread(target=go, daemon=True)
    runner.start()
    wait_until(lambda: len(commits._queue) == 7, 10, 0.01, "all seven queued")
    gate.set()
    runner.join(30)
    assert batch_sizes[0] == 7  # they did share a batch
    assert len(threads_done) == 7
    bad = threads_done.pop(6)
    assert isinstance(bad, Exception) and not isinstance(bad, StoreUnavailable)
    assert all(isinstance(g, Recorded) and not g.duplicate for g in threads_done.values())
    assert len(store.events(EventFilter(limit=100))) == 6


def test_an_event_the_store_refuses_costs_two_transactions(store_url: str, tmp_path: Path) -> None:
    """The batch that fails, then one transaction that records every event of it, the
    refused one kept as malformed."""
    store = open_test_store(store_url, tmp_path)
    transactions: list[bool] = []
    real_tx = store.tx

    def counted_tx(write: bool = True, durable: bool = True):  # type: ignore[no-untyped-def]
        transactions.append(write)
        return real_tx(write, durable)

    store.tx = counted_tx  # type: ignore[method-assign]
    gate = threading.Event()

    @contextmanager
    def exclusive() -> Iterator[None]:  # holds the first leader until all have queued
        gate.wait(10)
        with store.exclusive():
            yield

    commits = recorder(store)
    commits.exclusive = exclusive
    items = [event(f"good{i}") for i in range(3)] + [event("bad", "\ud800 bad")]
    answers: dict[int, Any] = {}

    def go() -> None:
        answers.update(run_all(lambda ev: commit(commits, ev), items))

    runner = threading.Thread(target=go, daemon=True)
    runner.start()
    wait_until(lambda: len(commits._queue) == 4, 10, 0.01, "all four queued")
    gate.set()
    runner.join(30)
    assert transactions == [True, True]
    kept, recorded = answers[3]
    assert kept.malformed and recorded.fallback and not recorded.duplicate
    assert all(not k.malformed and not r.fallback for k, r in (answers[i] for i in range(3)))
    store.tx = real_tx  # type: ignore[method-assign]
    rows = store.events(EventFilter(limit=100))
    assert sorted(r.malformed for r in rows) == [False, False, False, True]
