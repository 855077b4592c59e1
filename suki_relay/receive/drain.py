"""Draining: move spooled events into the store, oldest first, exactly once.

Every relay process with a spool runs one drain thread: receiving and delivering processes,
receive-only ones (SUKI_RELAY_DELIVER=0) and `suki-relay worker`, so nothing sits in a
spool unnoticed. One process per node drains at a time (a kernel lock on the spool).

Each batch is recorded in the store exactly as it would have been at receipt (same event
ids, dedup keys and plans), then deleted from the spool. A kill -9 between the two leaves
the batch in the spool; moving it again finds those event ids already committed, records
nothing and deletes them. A dedup key committed by another event (the same request sent
again after the outage, to this node or another) makes the spooled one a duplicate that
plans nothing. So nothing is lost and nothing is doubled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from suki_relay import logs, metrics
from suki_relay.receive.record import malformed
from suki_relay.store import NewEvent, Receiving, Recorded, StoreUnavailable
from suki_relay.store.spool import Spool

log = logging.getLogger("suki_relay.receive.drain")
BATCH = 200
IDLE_SECONDS = 1.0  # between looks at an empty spool
RETRY_SECONDS = 0.5  # between tries while the store is unreachable
HOLD_SECONDS = 60.0  # an event the store refuses for another reason is tried again after this


class Drainer:
    def __init__(self, spool: Spool, store: Receiving,
                 on_moved: Callable[[list[str]], None] | None = None):
        self.spool = spool
        self.store = store
        self.on_moved = on_moved  # told the actions planned, to wake this process's delivery
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Drainer:
        """Started (and stopped) by the process's lifecycle (serve/process.py)."""
        self._thread = threading.Thread(target=self._loop, name="suki-drain", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the drain thread to end (after stop()): a move under way finishes."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            wait = IDLE_SECONDS
            try:
                self.drain()
            except StoreUnavailable:
                wait = RETRY_SECONDS
            except Exception as exc:  # a bug, or the spool file itself failing: say so, go on
                logs.event(log, "draining the spool failed", logging.ERROR,
                           error_class=type(exc).__name__)
            self._wake.wait(wait)

    def drain(self) -> int:
        """Move everything waiting; returns how many events were moved. Raises
        StoreUnavailable (leaving the rest spooled) if the store cannot commit."""
        if not self.spool.has_waiting():
            return 0
        moved = 0
        with self.spool.draining() as mine:
            if not mine:
                return 0
            try:
                while not self._stopping.is_set():
                    batch = self.spool.oldest(BATCH)
                    if not batch:
                        break
                    moved += self._move(batch)
            finally:
                if moved:
                    logs.event(log, "spooled events moved into the store", moved=moved,
                               waiting=self.spool.summary()["spooled"])
        return moved

    def _move(self, batch: list[NewEvent]) -> int:
        """Record the batch in the store, then delete it from the spool. Events already in
        the store under their own id (moved by a drain that died before its delete) are
        only deleted: recording them again would plan their deliveries twice. Only this
        node's drainer, under the drain lock, moves these ids, so nothing races the look."""
        known = self.store.known([ev.id for ev in batch])
        todo = [ev for ev in batch if ev.id not in known]
        try:
            self.store.record(todo)
            done = batch
        except StoreUnavailable:
            raise
        except Exception:  # one event the store refuses must not hold back the others
            results = dict(zip([ev.id for ev in todo],
                               self.store.record_each(todo, malformed), strict=True))
            done = [ev for ev in batch if ev.id in known or self._moved(ev, results[ev.id])]
        self.spool.remove([ev.id for ev in done])
        metrics.SPOOL_DRAINED.inc(len(done))
        if self.on_moved is not None:
            actions = sorted({a for ev in done if ev.id not in known for a in ev.actions})
            if actions:
                self.on_moved(actions)
        return len(done)

    def _moved(self, event: NewEvent, result: Recorded | Exception) -> bool:
        """An event moved after its batch was refused, as the receiver commits a request
        (store.record_each): one the store refuses as it is (not for unavailability) is
        kept as malformed (raw body and identity, nothing planned; `events --malformed`
        lists it); failing that too, it stays in the spool, held back for a while."""
        if isinstance(result, Exception):
            logs.event(log, "spooled event refused by the store; kept in the spool",
                       logging.ERROR, event_id=event.id, error_class=type(result).__name__)
            self.spool.hold(event.id, f"store refused it: {type(result).__name__}",
                            HOLD_SECONDS)
            return False
        if result.fallback:
            logs.event(log, "spooled event refused by the store; kept as malformed",
                       logging.ERROR, event_id=event.id)
        return True
