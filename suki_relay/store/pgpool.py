"""PostgreSQL connections for one process: reconnect at once, never wait on a backoff.

psycopg_pool reconnects in background workers with exponential backoff (1 s, 2 s, 4 s ...
up to five minutes): after a database restart or failover a request could wait for the
pool's next scheduled attempt and be answered 503 although the database was back. Here:

* idle connections are a stack; each is checked when taken, and a dead one is dropped;
* when no live idle connection is left, the thread that needs one connects itself, at
  once (bounded by ``connect_timeout``), so the first request after an outage commits;
* while the database is known to be unreachable, one thread per process tries to connect
  at a time; the others wait at most PEER_WAIT_SECONDS for that attempt, then, if it
  failed or is still running, fail (the receiver spools) instead of each waiting out
  ``connect_timeout`` and each costing the database server a refused backend. The short
  wait matters just after the database comes back: a request arriving while another
  thread's (successful) attempt is under way commits to the database, not to the spool.

The check on checkout costs no round trip for a connection used in the last few seconds:
an idle connection has nothing to read, so a readable socket means the server closed it
(restart, ``pg_terminate_backend``, failover). A connection idle for longer is also sent
an empty query, which finds a peer that vanished without a word (a machine that rebooted).
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psycopg
from psycopg.pq import TransactionStatus

from suki_relay.errors import StoreUnavailable

RECHECK_IDLE_SECONDS = 2.0  # idle longer than this: also one round trip before use
PEER_WAIT_SECONDS = 0.5  # while down: how long a thread waits for another's connect attempt


class Connections:
    def __init__(self, conninfo: str, size: int, timeout: float):
        self.conninfo = conninfo
        self.size = size
        self.timeout = timeout  # seconds to wait for a free connection slot
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._attempted = threading.Condition(self._lock)  # notified when an attempt ends
        self._slots = threading.BoundedSemaphore(self.size)
        self._idle: list[tuple[psycopg.Connection, float]] = []  # (connection, idle since)
        self._down = False  # the last attempt to connect failed
        self._connecting = 0

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A live connection in autocommit mode (``conn.transaction()`` for a transaction)."""
        if self._pid != os.getpid():  # a forked child: the parent's sockets are not ours
            _ORPHANS.extend(conn for conn, _ in self._idle)  # never closed here: that would
            self._reset()  # send the parent's server a Terminate on its own socket
        if not self._slots.acquire(timeout=self.timeout):
            raise StoreUnavailable("postgresql: every connection busy for pool_timeout")
        try:
            conn = self._take()
            try:
                yield conn
            finally:
                self._give_back(conn)
        finally:
            self._slots.release()

    def _take(self) -> psycopg.Connection:
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn, since = self._idle.pop()
            if _alive(conn, time.monotonic() - since):
                return conn
            with suppress(Exception):
                conn.close()
        return self._connect()

    def _connect(self) -> psycopg.Connection:
        with self._lock:
            if self._down and self._connecting:
                self._attempted.wait_for(lambda: not self._connecting, PEER_WAIT_SECONDS)
                if self._down:  # the other attempt failed, or is still waiting on the server
                    raise StoreUnavailable("postgresql: unreachable (another thread is retrying)")
            self._connecting += 1
        conn: psycopg.Connection | None = None
        try:
            conn = psycopg.connect(self.conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"postgresql: {type(exc).__name__}") from None
        finally:
            with self._lock:
                self._connecting -= 1
                self._down = conn is None
                self._attempted.notify_all()
        return conn

    def _give_back(self, conn: psycopg.Connection) -> None:
        if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
            with suppress(Exception):
                conn.close()
            return
        with self._lock:
            self._idle.append((conn, time.monotonic()))

    def close(self) -> None:
        if self._pid != os.getpid():
            return
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            with suppress(Exception):
                conn.close()


_ORPHANS: list[psycopg.Connection] = []  # inherited across fork; kept so none is finalised


def _alive(conn: psycopg.Connection, idle_for: float) -> bool:
    """An idle connection is alive if the server has not written to it (a readable socket
    means an error message or end of file) and, after a longer idle time, answers."""
    try:
        if conn.closed or select.select([conn.fileno()], [], [], 0)[0]:
            return False
        if idle_for > RECHECK_IDLE_SECONDS:
            conn.execute("")
        return True
    except (psycopg.Error, OSError, ValueError):
        return False
