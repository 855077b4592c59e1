"""Group commit: concurrent callers share one transaction, each told its own result.

The first caller to arrive leads: it takes the store's write lock (while it waits for it,
more callers queue up), runs the batch function over everything queued, wakes exactly
the callers it served, and hands the lead to the next one queued. No thundering herd:
each waiter sleeps on its own lock. Used for recording events (the request path) and for
recording delivery attempts (the delivery path).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Generic, TypeVar

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
                 exclusive: Callable[[], AbstractContextManager[None]]):
        self.batch = batch
        self.exclusive = exclusive
        self._lock = threading.Lock()
        self._queue: list[_Slot[T, R]] = []
        self._leading = False

    def submit(self, item: T) -> R:
        """Run ``item`` in a shared batch; returns its result once the batch is committed."""
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            self._queue.append(slot)
            if not self._leading:
                self._leading = slot.lead = True
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
                    taken, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                results = self.batch([s.item for s in taken])
            for s, r in zip(taken, results, strict=True):
                s.result = r
        except BaseException as exc:
            for s in taken:
                s.error = exc
            if not taken:
                raise
        finally:
            with self._lock:
                for s in taken:
                    s.done = True
                following = self._queue[0] if self._queue else None
                if following is not None:
                    following.lead = True
                else:
                    self._leading = False
            for s in taken[1:]:  # taken[0] is the leader itself
                s.wake.release()
            if following is not None:
                following.wake.release()
