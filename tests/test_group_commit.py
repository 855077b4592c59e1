"""Group commit under failure: every caller gets an answer, one bad item fails only itself."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from suki_relay.record import recorder
from suki_relay.store import EventFilter, NewEvent, Recorded, StoreUnavailable
from suki_relay.store.group_commit import GroupCommit
from suki_relay.testing import wait_until

from .conftest import open_test_store


def event(key: str, session_id: str = "s") -> NewEvent:
    return NewEvent(key, b'{"status": "failure"}', 1, "failure", session_id, "e", False,
                    ["r"], ["a"])


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
