"""PostgreSQL connections for one process: psycopg_pool, set for quick recovery.

psycopg_pool keeps the connections (grows to ``pool_size``, replaces broken ones, retires
old and idle ones) in its own threads. Its defaults suit a database that is rarely away;
a relay must commit the first request after a restart and spool at once while the
database is down, so:

* ``reconnect_timeout`` is 0: a connection the pool could not open is tried once more at
  once, then given up (no backoff of 1 s, 2 s, 4 s ... up to five minutes, during which
  a request arriving after the database came back would wait for the next attempt and be
  answered 503 although the database was back); the next request asks for a new one;
* ``reconnect_failed`` marks the database down; while it is down (or when a connection
  just taken was found dead) a request waits at most PEER_WAIT_SECONDS for a connection,
  not ``pool_timeout``, then fails (the receiver spools). A request that waits looks
  again every PEER_WAIT_SECONDS (the pool does not wake it when its connection attempt
  fails), so one that started waiting before the pool knew gives up as soon as it does.
  The short wait matters just after the database comes back: the request's own
  connection attempt succeeds within it and the request commits to the database, not to
  the spool;
* a connection is checked when taken, and a dead one (database restarted, connection
  terminated) makes the pool check every idle connection at once (``pool.check()``), so
  the next connection taken is a new one, without the pool's own checking loop, which
  sleeps a backoff of 1 s, 2 s ... between the dead connections it meets one by one;
  ``pool.check()`` also runs on the first OperationalError of a transaction;
* the check costs no round trip for a connection used in the last few seconds: an idle
  connection has nothing to read, so a readable socket (``poll``, which takes any file
  descriptor number, unlike ``select``) means the server closed it (restart,
  ``pg_terminate_backend``, failover). A connection idle for longer is also sent an empty
  query (``ConnectionPool.check_connection``), which finds a peer that vanished without a
  word (a machine that rebooted).

Not set: ``max_waiting``. It refuses a request at once when that many already wait for a
connection, which under ordinary load (more request and delivery threads than
connections) turns a burst into spooled or refused requests while the database is fine;
test_pgpool.py's test_more_threads_than_connections_all_commit shows it.

The pool's own log lines (a warning per failed connection attempt and per broken connection)
are kept below ERROR: the relay says once, in its own log, that the store is unavailable.

The pool is opened at the first connection asked for, in the process that uses it: a
serving process's store is used only once its lifecycle has started (serve/process.py),
after gunicorn has forked it, so no pool ever crosses a fork.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from suki_relay.errors import StoreUnavailable
from suki_relay.watchdog import watchdog

RECHECK_IDLE_SECONDS = 2.0  # idle longer than this: also one round trip before use
PEER_WAIT_SECONDS = 0.5  # while down: how long a request waits for a connection
RECONNECT_SECONDS = 0.0  # the pool's reconnect_timeout: retry once at once, then give up

logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


class Connections:
    def __init__(self, conninfo: str, size: int, timeout: float):
        self.conninfo = conninfo
        self.size = size
        self.timeout = timeout  # seconds to wait for a free connection
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self._down = False  # the pool's last attempt to connect failed
        self._idle_since: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = \
            weakref.WeakKeyDictionary()

    def _current(self) -> ConnectionPool[Any]:
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.conninfo, kwargs={"autocommit": True}, min_size=1,
                    max_size=self.size, timeout=self.timeout,
                    reconnect_timeout=RECONNECT_SECONDS, reconnect_failed=self._failed,
                    name=f"suki-relay-{os.getpid()}", open=False)
                self._pool.open(wait=False)
                self._down = False
            return self._pool

    def _failed(self, pool: ConnectionPool[Any]) -> None:
        self._down = True

    @contextmanager
    def connection(self, cut: Cut | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A live connection in autocommit mode (``conn.transaction()`` for a transaction).
        ``cut``: each connection taken is attached to it before it is checked, so a check
        that waits on a database that never answers is cut off too."""
        pool = self._current()
        conn = self._take(pool, cut)
        try:
            yield conn
        except psycopg.OperationalError:
            if cut is None or not cut.fired:  # (a check waits on them: not within a cut)
                with suppress(Exception):
                    pool.check()  # the others are likely broken too: replace them now
            raise
        finally:
            self._idle_since[conn] = time.monotonic()
            with suppress(Exception):
                pool.putconn(conn)

    def _take(self, pool: ConnectionPool[Any], cut: Cut | None = None
              ) -> psycopg.Connection[Any]:
        suspicious = self._down
        for _ in range(self.size + 2):  # each dead one found empties the pool of the others
            conn = self._get(pool, suspicious)
            if cut is not None:
                cut.attach(conn.fileno())
            if _alive(conn, time.monotonic() - self._idle_since.get(conn, 0.0)):
                self._down = False
                return conn
            if cut is not None:
                cut.detach()  # closed next: its number may serve another socket
            with suppress(Exception):
                conn.close()
            pool.putconn(conn)  # closed: the pool replaces it
            if cut is not None and cut.fired:
                break
            with suppress(Exception):
                pool.check()
            suspicious = True
        raise StoreUnavailable("postgresql: no live connection")

    def _get(self, pool: ConnectionPool[Any], suspicious: bool) -> psycopg.Connection[Any]:
        """A connection from the pool, waiting at most PEER_WAIT_SECONDS at a time: the
        pool does not wake a waiting request when its attempt to connect fails, so the
        request looks again, and gives up as soon as the pool reports the database down
        (a process that starts during an outage learns it within one wait, not after
        pool_timeout); else after pool_timeout, every connection being busy."""
        deadline = time.monotonic() + (PEER_WAIT_SECONDS if suspicious else self.timeout)
        while True:
            try:
                return pool.getconn(max(0.001, min(PEER_WAIT_SECONDS,
                                                   deadline - time.monotonic())))
            except PoolTimeout:
                if suspicious or self._down:
                    raise StoreUnavailable("postgresql: unreachable") from None
                if time.monotonic() >= deadline:
                    raise StoreUnavailable("postgresql: every connection busy for "
                                           "pool_timeout") from None

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.close()


class Cut:
    """A bound on one transaction, from the moment it has its connection: the watchdog
    calls expire() at the deadline, which shuts the connection's socket down, so whatever
    the driver waits in (the liveness check, a lock held elsewhere, a database that took the
    query and never answers: a pooler such as PgBouncer holding it while the server
    restarts, for up to its query_wait_timeout, two minutes by default) fails at once.
    Shut down under the lock; detach() before a connection is closed and finish() before
    it goes back to the pool, so a late expire() never reaches a socket another transaction
    has, or that has taken the closed one's number. Once fired, a connection attached later
    is shut down at once: the transaction fails, StoreUnavailable."""

    __slots__ = ("deadline", "done", "fd", "fired", "lock", "seconds")

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = 0.0  # set at the first attach()
        self.fd: int | None = None
        self.done = False
        self.fired = False
        self.lock = threading.Lock()

    def attach(self, fd: int) -> None:
        """The connection the transaction now uses (taken, about to be checked)."""
        with self.lock:
            self.fd = fd
            first = not self.deadline
            if first:
                self.deadline = time.monotonic() + self.seconds
            if self.fired:
                _shut(fd)
        if first:
            watchdog.watch(self)

    def detach(self) -> None:
        with self.lock:
            self.fd = None

    def expire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.fired = True
            if self.fd is not None:
                _shut(self.fd)

    def finish(self) -> None:
        with self.lock:
            self.done = True


def _shut(fd: int) -> None:
    """Shut the socket behind ``fd`` down both ways (through a copy of the descriptor,
    which is closed; the driver's own stays open, and fails at its next use)."""
    with suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def _alive(conn: psycopg.Connection[Any], idle_for: float) -> bool:
    """An idle connection is alive if the server has not written to it (a readable socket
    means an error message or end of file) and, after a longer idle time, answers."""
    try:
        if conn.closed:
            return False
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
        if poller.poll(0):
            return False
        if idle_for > RECHECK_IDLE_SECONDS:
            ConnectionPool.check_connection(conn)
        return True
    except (psycopg.Error, OSError, ValueError):
        return False
