"""The shared store: several relay nodes on one PostgreSQL database (psycopg 3 + pool).

Schema creation takes an advisory lock, so nodes starting together do not race. Claimers
serialise on a transaction-scoped advisory lock (which keeps per-action concurrency limits
true across nodes) and take rows FOR UPDATE SKIP LOCKED. Connections are checked when
taken from the pool, so after a database restart the first use reconnects; while the
database is unreachable every operation raises StoreUnavailable (the receiver answers 503).

Pool settings ride on the URL: ``?pool_size=10&pool_timeout=5&connect_timeout=5``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .base import StoreUnavailable
from .sql import SqlStore
from .tx import Tx

SCHEMA_LOCK = 0x5C1_0001
CLAIM_LOCK = 0x5C1_0002
POOL_PARAMS = {"pool_size": 10, "pool_timeout": 5.0}


def split_url(url: str) -> tuple[str, dict[str, float]]:
    """Take pool settings out of the URL; what remains goes to libpq."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    pool = {k: float(query.pop(k, default)) for k, default in POOL_PARAMS.items()}
    query.setdefault("connect_timeout", "5")
    return urlunsplit(parts._replace(query=urlencode(query))), pool


class PostgresStore(SqlStore):
    placeholder = "%s"
    blob_type = "BYTEA"
    skip_locked = " FOR UPDATE OF d SKIP LOCKED"

    def __init__(self, url: str):
        self.url = url
        self.conninfo, pool = split_url(url)
        self.pool_size = int(pool["pool_size"])
        self.pool_timeout = pool["pool_timeout"]
        self._pool: ConnectionPool | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self.ensure_schema()

    def _get_pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():  # pools do not survive fork
                self._pool = ConnectionPool(
                    self.conninfo, min_size=1, max_size=self.pool_size,
                    timeout=self.pool_timeout, check=ConnectionPool.check_connection,
                    open=True, name=f"suki-relay-{os.getpid()}",
                )
                self._pid = os.getpid()
            return self._pool

    @contextmanager
    def tx(self, write: bool = True, durable: bool = True) -> Iterator[Tx]:
        try:
            with self._get_pool().connection() as conn, conn.transaction(), conn.cursor() as cur:
                if not durable:
                    cur.execute("SET LOCAL synchronous_commit TO OFF")
                yield Tx(cur, self.placeholder)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreUnavailable(f"postgresql: {type(exc).__name__}") from None

    def lock_schema(self, tx: Tx) -> None:
        tx.exec(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")

    def lock_claims(self, tx: Tx) -> None:
        tx.exec(f"SELECT pg_advisory_xact_lock({CLAIM_LOCK})")

    def close(self) -> None:
        if self._pool is not None and self._pid == os.getpid():
            self._pool.close()
            self._pool = None
