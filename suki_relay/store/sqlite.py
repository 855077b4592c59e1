"""The embedded default: one SQLite file, WAL; what must survive is fsynced (synchronous=FULL).

SqliteDatabase is the file, whatever its tables: the ledger's (SqliteStore) and the
spool's (spool.py) each compose one and give it their schema. Reads use a connection per
thread; every write transaction of a process uses one connection, whichever thread runs
it (they are serialised by the write lock, below): a connection that did not make the
last commit finds the file changed and reads its pages again, and a group commit's leader
is whichever thread came first. A serving process opens its store lazily (below), in the
process that uses it, so no connection is ever made before a fork (gunicorn's master makes
none). close() closes every connection opened, from any thread. Writers take the database
lock up front (BEGIN IMMEDIATE), which also serialises claimers across processes.

Transactions that need not be durable (``tx(durable=False)``: claims, delivery
bookkeeping) commit with ``synchronous=OFF``, and never checkpoint: SQLite runs its automatic
checkpoint inside whichever commit takes the WAL past ``wal_autocheckpoint`` pages, with
that commit's sync setting, and a checkpoint under ``synchronous=OFF`` copies the WAL into
the file without fsyncing the file, after which the next writer starts the WAL over: a
power loss would then take committed (fsynced) events with it. So a non-durable
transaction turns the automatic checkpoint off for its commit, and afterwards, under
``synchronous=FULL`` again, checkpoints (PASSIVE) itself after every
``CHECKPOINT_EVERY`` non-durable commits of the process, so a long stretch of deliveries
alone keeps the WAL bounded. (Nothing here opens the -wal or -shm files itself: closing
any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
included, and another process would then reset the -shm under this one's mapping, a
SIGBUS.) Durable commits keep SQLite's own automatic
checkpoint, under ``synchronous=FULL``, which fsyncs the WAL before copying it and the file
after; so do ``checkpoint()`` and the close of the last connection.

``lazy``: nothing is opened until the first transaction, and a file that cannot be opened
then (not an SQLite file, no permission, a newer schema) does not stop the process; every
transaction raises StoreUnavailable, saying why, until the file can be prepared (a serving
process must boot whatever its files say, and recover by itself once they are fixed).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path

from suki_relay.errors import SchemaTooNew, StoreUnavailable
from suki_relay.store.sql import SqlStore
from suki_relay.store.tx import Tx

# SQLite's default wal_autocheckpoint: the WAL is folded back into the file once it holds
# this many frames (pages) not yet folded in
CHECKPOINT_FRAMES = 1000
# a non-durable commit writes a few pages (an attempt, its delivery, the next claim): a
# checkpoint after this many of them keeps the WAL near CHECKPOINT_FRAMES, at two fsyncs
CHECKPOINT_EVERY = 100


class SqliteDatabase:
    """One SQLite file: owner-only, WAL, every commit fsynced, a connection per thread,
    writers queued on a lock file (exclusive()). ``schema`` makes or upgrades its owner's
    tables (in a transaction of this database), once: at once unless lazy, else at the
    first transaction."""

    def __init__(self, path: Path, schema: Callable[[], None], busy_timeout: float = 10.0,
                 lazy: bool = False):
        self.path = path
        self.schema = schema
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._locks: list[int] = []  # each thread's descriptor of the lock file
        self._opened_lock = threading.Lock()
        self._generation = 0  # close() starts a new one: connections from before reopen
        self._writer_conn: tuple[sqlite3.Connection, int] | None = None  # and its generation
        self._undurable_commits = 0  # non-durable commits since the last checkpoint
        self.lazy = lazy
        self._prepared = False
        self._prepare_lock = threading.Lock()

    def start(self) -> None:
        """Unless lazy, make the file and its schema now (raising if that cannot be done)."""
        if not self.lazy:
            self._prepare()

    def _prepare(self) -> None:
        """Make the file (owner-only) and its schema, once."""
        with self._prepare_lock:
            if self._prepared:
                return
            self._local.preparing = True
            try:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    # owner-only before SQLite opens it: its -wal and -shm files copy these
                    os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
                    os.chmod(self.path, 0o600)
                except OSError as exc:
                    raise StoreUnavailable(f"sqlite: cannot open: {exc.strerror}") from None
                try:
                    self.schema()
                except SchemaTooNew as exc:
                    if not self.lazy:
                        raise
                    raise StoreUnavailable(str(exc)) from None
            finally:
                self._local.preparing = False
            self._prepared = True

    def _open(self) -> sqlite3.Connection:
        try:  # cannot open the file, too many open files: unavailable, not a bug
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout,
                                   isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"sqlite: cannot open: {type(exc).__name__}") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_FRAMES}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA journal_size_limit=16777216")  # the WAL shrinks to 16 MiB
        except sqlite3.Error as exc:
            conn.close()
            raise StoreUnavailable(f"sqlite: cannot open: {type(exc).__name__}") from None
        return conn

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, for reads."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.generation != self._generation:
            conn = self._open()
            with self._opened_lock:
                self._opened.append(conn)
            self._local.conn, self._local.generation = conn, self._generation
        return conn

    def _lock_file(self) -> int:
        """This thread's descriptor of the lock file (exclusive())."""
        lock = getattr(self._local, "lock", None)
        if lock is None or self._local.lock_generation != self._generation:
            try:
                lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise StoreUnavailable(f"sqlite: cannot open: {type(exc).__name__}") from None
            with self._opened_lock:
                self._locks.append(lock)
            self._local.lock, self._local.lock_generation = lock, self._generation
        return int(lock)

    def _writer(self) -> sqlite3.Connection:
        """The process's connection for writes; only with the write lock held (exclusive()),
        so no two threads ever use it at once."""
        with self._opened_lock:
            writer = self._writer_conn
            if writer is not None and writer[1] == self._generation:
                return writer[0]
        conn = self._open()
        with self._opened_lock:
            self._opened.append(conn)
            self._writer_conn = (conn, self._generation)
        return conn

    @contextmanager
    def tx(self, write: bool = True, durable: bool = True) -> Iterator[Tx]:
        if not self._prepared and not getattr(self._local, "preparing", False):
            self._prepare()
        with self.exclusive() if write else nullcontext():
            conn = self._writer() if write else self._connection()
            if not durable:  # no checkpoint without fsync (module docstring)
                conn.execute("PRAGMA wal_autocheckpoint=0")
                conn.execute("PRAGMA synchronous=OFF")
            try:
                yield from self._tx(conn, write)
            finally:
                if not durable:
                    conn.execute("PRAGMA synchronous=FULL")
                    conn.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_FRAMES}")
            if not durable and write:
                self._checkpoint_if_due(conn)

    def _checkpoint_if_due(self, conn: sqlite3.Connection) -> None:
        """After a non-durable commit (synchronous=FULL again): fold the WAL back into the
        file after every CHECKPOINT_EVERY such commits of this process. PASSIVE: waits for no
        reader. A checkpoint that fails is retried after the next commit."""
        with self._opened_lock:
            self._undurable_commits += 1
            if self._undurable_commits < CHECKPOINT_EVERY:
                return
            self._undurable_commits = 0
        with suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _tx(self, conn: sqlite3.Connection, write: bool) -> Iterator[Tx]:
        try:
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from None
        try:
            yield Tx(cur, "?")
        except sqlite3.OperationalError as exc:  # disk full, I/O error, locked too long
            conn.rollback()
            raise StoreUnavailable(f"sqlite: {exc}") from None
        except BaseException:
            conn.rollback()
            raise
        try:
            conn.commit()
        except sqlite3.OperationalError as exc:
            conn.rollback()
            raise StoreUnavailable(f"sqlite: {exc}") from None

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the write lock across processes and threads.

        Writers queue on a lock file in the kernel instead of in SQLite's sleep-and-retry
        busy handler; group commit takes it before it gathers a batch, so the time spent
        waiting for another process's commit fills the next group commit.
        """
        lock = self._lock_file()
        if getattr(self._local, "held", False):
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        self._local.held = True
        try:
            yield
        finally:
            self._local.held = False
            fcntl.flock(lock, fcntl.LOCK_UN)

    def checkpoint(self) -> None:
        """Fold the WAL back into the file: freed pages are reused. Under the connection's
        synchronous=FULL (only a non-durable transaction lowers it, for its own commit):
        the WAL is fsynced before it is copied, and the file after."""
        with self.exclusive():
            self._writer().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._opened_lock:
            opened, self._opened = self._opened, []
            locks, self._locks = self._locks, []
            self._generation += 1
        for conn in opened:
            conn.close()
        for lock in locks:
            os.close(lock)


class SqliteStore(SqlStore):
    """The ledger in a SQLite database."""

    placeholder = "?"
    blob_type = "BLOB"
    unavailable = (sqlite3.OperationalError,)

    def __init__(self, path: Path, busy_timeout: float = 10.0, lazy: bool = False):
        self.path = path
        self.url = f"sqlite:///{path}"
        self.db = SqliteDatabase(path, self.ensure_schema, busy_timeout, lazy)
        self.db.start()

    def tx(self, write: bool = True, durable: bool = True) -> AbstractContextManager[Tx]:
        return self.db.tx(write, durable)

    def exclusive(self) -> AbstractContextManager[None]:
        return self.db.exclusive()

    def ping(self) -> None:
        """Raises unless a commit reaches the disk now (readiness): it rewrites the file's
        header page with the user_version it holds, a page appended to the WAL and fsynced
        as a notification's commit is (an UPDATE that changes nothing writes nothing, and
        commits even on a full disk). No row is added: the file never grows for it, and
        the page folds back in place at the next checkpoint."""
        with self.tx() as tx:
            version = int(tx.exec("PRAGMA user_version").fetchone()[0])
            tx.exec(f"PRAGMA user_version = {version}")

    def prune(self, before: float) -> int:
        """Delete, then fold the WAL back into the file: freed pages are reused by new events."""
        deleted = super().prune(before)
        self.db.checkpoint()
        return deleted

    def close(self) -> None:
        self.db.close()
