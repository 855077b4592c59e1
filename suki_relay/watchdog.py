"""One watchdog thread per process for every deadline: request bodies being read
(receive/body.py) and outbound exchanges (deliver/deadline.py).

A per-read socket timeout does not bound a peer that sends a byte at a time, so a reader
registers what it is waiting on with a deadline; when the deadline passes before the
reader has finished, the watchdog calls its ``expire()``, which shuts the socket down and
so ends whatever the reader is blocked in. The reader pays a lock, a heap push and, once
done, a flag write; the thread sleeps until the earliest deadline and is woken only by a
deadline earlier than the one it sleeps for.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from typing import Protocol


class Watched(Protocol):
    """What the watchdog watches: a deadline (``time.monotonic()``), whether the reader is
    done (then it is dropped), and what to do when the deadline passes first."""

    @property
    def deadline(self) -> float: ...

    @property
    def done(self) -> bool: ...

    def expire(self) -> None: ...


class Watchdog:
    """A daemon thread, started and stopped with the process's other parts by its
    lifecycle (serve/process.py); in a process without one (a CLI command), at the first
    watch. A gunicorn master never starts it, so no fork copies it running."""

    def __init__(self, name: str = "suki-deadline"):
        self.name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Watched]] = []
        self._seq = itertools.count()
        self._running = False
        self._stopping = False
        self._wake_at = 0.0  # when the thread will look again (0: it is looking now)

    def start(self) -> None:
        with self._cond:
            self._start()

    def _start(self) -> None:
        if not self._running:
            self._running, self._stopping = True, False
            threading.Thread(target=self._run, name=self.name, daemon=True).start()

    def stop(self) -> None:
        """End the thread (the process is stopping, after its deliveries have)."""
        with self._cond:
            self._running, self._stopping = False, True
            self._cond.notify()

    def watch(self, item: Watched) -> None:
        with self._cond:
            self._start()
            heapq.heappush(self._heap, (item.deadline, next(self._seq), item))
            if item.deadline < self._wake_at:
                self._cond.notify()

    def _run(self) -> None:
        heap = self._heap
        while True:
            with self._cond:
                if self._stopping:
                    return
                while heap and heap[0][2].done:
                    heapq.heappop(heap)  # finished in time: nothing to do
                now = time.monotonic()
                if not heap or heap[0][0] > now:
                    self._wake_at = heap[0][0] if heap else math.inf
                    self._cond.wait(None if not heap else self._wake_at - now)
                    self._wake_at = 0.0
                    continue
                item = heapq.heappop(heap)[2]
            item.expire()


watchdog = Watchdog()
