"""Group commit: concurrent callers share one transaction, each told its own result.

The first caller to arrive leads: it takes the store's write lock (while it waits for it,
more callers queue up), runs the batch function over everything queued, wakes exactly
the callers it served, and hands the lead to the next one queued. No thundering herd:
each waiter sleeps on its own lock. With ``gather_seconds`` (PostgreSQL, where each
transaction costs the server a fixed share of CPU), a leader that sees requests coming
together (another queued behind it, or more than one in the last batch) first waits up
to that long, so that its transaction serves more of them; requests arriving one at a
time never wait. With ``leaders`` above 1 (PostgreSQL, where a batch spends most of its
time waiting for the server), once a leader has taken its batch the next caller may lead
another beside it, up to that many under way; one gathers at a time, so no batch is
empty and every caller is in exactly one. Used for recording events (the request path)
and for recording delivery attempts (the delivery path).

Failures are contained. If the write lock (or the transaction) cannot even be entered,
every caller queued at that moment is told StoreUnavailable and the next caller starts
afresh; nobody is left waiting for a leader that gave up. If a batch fails for any other
reason than the store being unavailable, its items are handed once to ``isolate``, which
returns each item's result or error (the store's record_each: one more transaction, each
event under a savepoint), so one bad item costs two transactions and fails only itself.
Without ``isolate``, the items are run again one by one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Generic, TypeVar

from suki_relay.errors import StoreUnavailable

T = TypeVar("T")
R = TypeVar("R")
MAX_BATCH = 128


class _Slot(Generic[T, R]):
    __slots__ = ("done", "error", "item", "lead", "result", "wake")

    def __init__(self, item: T):
        self.item = item
        self.result: R | None = None
        self.error: BaseException | None = None
        self.done = False
        self.lead = False
        self.wake = threading.Lock()  # released when done, or when made the leader
        self.wake.acquire()


class GroupCommit(Generic[T, R]):
    def __init__(self, batch: Callable[[list[T]], list[R]],
                 exclusive: Callable[[], AbstractContextManager[None]],
                 isolate: Callable[[list[T]], list[R | Exception]] | None = None,
                 gather_seconds: float = 0.0, leaders: int = 1):
        self.batch = batch
        self.exclusive = exclusive
        self.isolate = isolate or self._one_by_one
        self.gather_seconds = gather_seconds
        self.leaders = leaders  # batches under way at once (one of them gathering)
        self._lock = threading.Lock()
        self._full = threading.Condition(self._lock)
        self._queue: list[_Slot[T, R]] = []
        self._leading = 0  # leaders under way: gathering, or running their batch
        self._gathering = False  # a leader has not taken its batch yet
        self._last = 0  # the size of the last batch

    def submit(self, item: T) -> R:
        """Run ``item`` in a shared batch; returns its result once the batch is committed."""
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            self._queue.append(slot)
            if not self._gathering and self._leading < self.leaders:
                self._leading += 1
                self._gathering = slot.lead = True
            elif len(self._queue) == MAX_BATCH:
                self._full.notify()
        if not slot.lead:
            slot.wake.acquire()
        if not slot.done:
            self._lead()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _lead(self) -> None:
        taken: list[_Slot[T, R]] = []
        try:
            with self.exclusive():
                with self._lock:
                    self._gather()
                    taken, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    self._last = len(taken)
                    self._gathering = False  # the next to arrive may lead a batch beside it
                self._run(taken)
        except BaseException as exc:
            if not taken:  # the lock or the transaction could not be entered: nothing ran
                with self._lock:
                    taken, self._queue = self._queue, []
                    self._gathering = False
                exc = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(
                    f"cannot enter the write lock: {type(exc).__name__}")
            for s in taken:  # _run raised: none of them has a result
                s.error = exc
        finally:
            self._hand_over(taken)

    def _gather(self) -> None:
        """Under self._lock: while requests come together (more than one queued, or in
        the last batch), wait up to gather_seconds for more to join this batch."""
        if self.gather_seconds and (len(self._queue) > 1 or self._last > 1) \
                and len(self._queue) < MAX_BATCH:
            self._full.wait(self.gather_seconds)

    def _run(self, taken: list[_Slot[T, R]]) -> None:
        """The batch; if it fails other than by the store being unavailable, isolated."""
        try:
            results = self.batch([s.item for s in taken])
        except StoreUnavailable:
            raise
        except Exception:
            for s, each in zip(taken, self.isolate([s.item for s in taken]), strict=True):
                if isinstance(each, Exception):
                    s.error = each
                else:
                    s.result = each
            return
        for s, r in zip(taken, results, strict=True):
            s.result = r

    def _one_by_one(self, items: list[T]) -> list[R | Exception]:
        results: list[R | Exception] = []
        for i, item in enumerate(items):
            try:
                results.append(self.batch([item])[0])
            except StoreUnavailable as exc:  # those before are committed; the rest not
                return results + [exc] * (len(items) - i)
            except Exception as exc:
                results.append(exc)
        return results

    def _hand_over(self, taken: list[_Slot[T, R]]) -> None:
        """Wake everyone served; make the next one queued the leader, unless another leader
        is gathering them already (or nobody is queued)."""
        with self._lock:
            for s in taken:
                s.done = True
            following = self._queue[0] if self._queue and not self._gathering else None
            if following is not None:
                self._gathering = following.lead = True
            else:
                self._leading -= 1
        for s in taken:
            if not s.lead:  # the leader is awake already
                s.wake.release()
        if following is not None:
            following.wake.release()
