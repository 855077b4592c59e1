"""The shared store: several relay nodes on one PostgreSQL database (psycopg 3 + pool).

Schema creation takes an advisory lock, so nodes starting together do not race. Claimers
serialise on a transaction-scoped advisory lock (which keeps per-action concurrency limits
true across nodes) and take rows FOR UPDATE SKIP LOCKED. Connections are checked when
taken (pgpool.py), and a request that finds none alive connects at once, so the first
request after a database restart commits; while the database is unreachable every
operation raises StoreUnavailable (the receiver spools, or answers 503).

Pool settings ride on the URL: ``?pool_size=10&pool_timeout=5&connect_timeout=5``; every
query parameter is checked (query_problem) by `check` and when the store is opened.

The request path's transactions run under ``bounded()``: once a transaction has its
connection (its liveness check included), it takes at most that long, or the watchdog
shuts the connection down (pgpool.Cut) and StoreUnavailable is raised; the receiver spools.
That bounds a lock held elsewhere and a database that takes the query and never answers.
Nothing else is bounded so: a delivery's transaction waits for a lock as it always did (its
lease is safe meanwhile: the lock holds back the claims that could take it over too).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg.conninfo
import psycopg.errors
import psycopg.pq

from suki_relay.errors import SchemaTooNew, StoreUnavailable
from suki_relay.store.pgpool import Connections, Cut
from suki_relay.store.sql import SqlStore
from suki_relay.store.tx import Tx

SCHEMA_LOCK = 0x5C1_0001
CLAIM_LOCK = 0x5C1_0002
GATHER_SECONDS = 0.001  # group commit: how long a batch waits for more (docs/benchmarks.md)
BATCHES_AT_ONCE = 2  # group commit: batches under way at once in a process (idem)
POOL_PARAMS = {"pool_size": 10, "pool_timeout": 5.0}
_NUMBERS = {  # query parameter: (convert, test, what is expected)
    "pool_size": (int, lambda n: n > 0, "a positive integer"),
    "pool_timeout": (float, lambda n: 0 < n < math.inf, "a positive number of seconds"),
    "connect_timeout": (int, lambda n: n >= 0, "a whole number of seconds"),
}


def query_problem(url: str) -> str | None:
    """What is wrong with a PostgreSQL URL's query (the pool's settings and libpq's
    parameters), or None: the rule for `check`, and for open_store. Never repeats a value
    (the URL may hold a password)."""
    try:
        query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    except ValueError:
        return "the URL cannot be parsed"
    known = _libpq_parameters()
    for name, value in query:
        if name in _NUMBERS:
            convert, test, expected = _NUMBERS[name]
            try:
                ok = test(convert(value))
            except ValueError:
                ok = False
            if not ok:
                return f"query parameter {name}: expected {expected}"
        elif name not in known:
            return (f"query parameter {name[:40]!r}: unknown; expected pool_size, "
                    "pool_timeout or a libpq parameter (connect_timeout, sslmode, ...)")
    try:
        psycopg.conninfo.conninfo_to_dict(split_url(url)[0])
    except psycopg.Error:
        return "not a connection URL that libpq accepts"
    return None


@functools.cache
def _libpq_parameters() -> frozenset[str]:
    return frozenset(d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults())


def split_url(url: str) -> tuple[str, dict[str, float]]:
    """Take pool settings out of the URL (checked by query_problem); what remains goes to
    libpq."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    pool = {k: float(query.pop(k, default)) for k, default in POOL_PARAMS.items()}
    query.setdefault("connect_timeout", "5")
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote))), pool


class PostgresStore(SqlStore):
    placeholder = "$n"  # a RawCursor: $1, $2 ... sent as they are (tx.py: numbered)
    blob_type = "BYTEA"
    skip_locked = " FOR UPDATE OF d SKIP LOCKED"
    now_sql = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
    # read-only: a standby not yet promoted after a failover; nothing can be written until
    # it is, so it is unavailable (a delivery's attempt is recorded once it is back, not
    # abandoned and the delivery made again)
    unavailable = (psycopg.OperationalError, psycopg.InterfaceError,
                   psycopg.errors.ReadOnlySqlTransaction)
    # a durable commit costs the server about as much CPU as eight events' rows (its WAL
    # flush and transaction), so a batch waits a moment for requests coming together
    gather_seconds = GATHER_SECONDS
    # a batch spends most of its time waiting for the server (docs/benchmarks.md): while
    # one commits, the next gathers and commits on a connection of its own
    batches_at_once = BATCHES_AT_ONCE

    def __init__(self, url: str, lazy: bool = False):
        """``lazy``: connect at the first transaction, not now (a serving process connects
        in the process that uses the store, never before gunicorn forks it); if the
        database is unreachable then (or its schema is newer than this relay), every
        transaction raises StoreUnavailable until the schema is made sure of (a serving
        process must boot, answer 503 or spool, and recover by itself when the database is
        back)."""
        self.url = url
        self.lazy = lazy
        self.conninfo, pool = split_url(url)
        self.pool_size = int(pool["pool_size"])
        self.pool_timeout = pool["pool_timeout"]
        self.connections = Connections(self.conninfo, self.pool_size, self.pool_timeout)
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        self._ensuring = threading.local()
        self._bound = threading.local()  # bounded(): this thread's transactions' limit
        if not lazy:
            self._ready_schema()

    def _ready_schema(self) -> None:
        with self._schema_lock:
            if not self._schema_ready:
                self._ensuring.active = True
                try:
                    self.ensure_schema()
                except SchemaTooNew as exc:
                    if not self.lazy:
                        raise
                    raise StoreUnavailable(str(exc)) from None
                finally:
                    self._ensuring.active = False
                self._schema_ready = True

    @contextmanager
    def bounded(self, seconds: float) -> Iterator[None]:
        before = getattr(self._bound, "seconds", None)
        self._bound.seconds = seconds
        try:
            yield
        finally:
            self._bound.seconds = before

    @contextmanager
    def tx(self, write: bool = True, durable: bool = True) -> Iterator[Tx]:
        ensuring = getattr(self._ensuring, "active", False)
        if not self._schema_ready and not ensuring:
            self._ready_schema()
        seconds = None if ensuring else getattr(self._bound, "seconds", None)
        cut = Cut(seconds) if seconds is not None else None
        try:
            with self.connections.connection(cut) as conn:
                try:
                    with conn.transaction(), psycopg.RawCursor(conn) as cur:
                        if not durable:
                            cur.execute("SET LOCAL synchronous_commit TO OFF")
                        yield Tx(cur, self.placeholder)
                finally:
                    if cut is not None:
                        cut.finish()  # before the connection goes back to the pool
        except self.unavailable as exc:
            if cut is not None and cut.fired:
                raise StoreUnavailable(f"postgresql: no answer within {seconds:g} s") from None
            raise StoreUnavailable(f"postgresql: {type(exc).__name__}") from None

    def lock_schema(self, tx: Tx) -> None:
        tx.exec(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")

    def lock_claims(self, tx: Tx) -> None:
        tx.exec(f"SELECT pg_advisory_xact_lock({CLAIM_LOCK})")

    def close(self) -> None:
        self.connections.close()
