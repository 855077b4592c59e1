"""The tables, as a numbered list of migrations, and bringing a database up to date.

A database records each version applied in ``relay_schema``. On open, a store at the
latest version costs one read; an older one is upgraded in place, every missing step in
one transaction, under the backend's schema lock (nodes starting together upgrade once);
a newer one (written by a later relay) is refused with SchemaTooNew.
"""

from __future__ import annotations

from dataclasses import dataclass

from suki_relay.errors import SchemaTooNew
from suki_relay.store.tx import Backend, Tx


@dataclass(frozen=True)
class Migration:
    """One step: ``sql`` is statements separated by ``;`` (so no ``;`` inside a literal),
    with ``{blob}`` for the binary type (BLOB on SQLite, BYTEA on PostgreSQL) and braces
    doubled. It runs in one transaction with the steps before and after it."""

    version: int
    why: str
    sql: str


MIGRATIONS: list[Migration] = [
    Migration(1, "events, their deliveries and every attempt", """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    received_at DOUBLE PRECISION NOT NULL,
    dedup_key TEXT NOT NULL UNIQUE,
    generated_at BIGINT,
    status TEXT,
    session_id TEXT,
    encounter_id TEXT,
    malformed INTEGER NOT NULL DEFAULT 0,
    matched INTEGER NOT NULL DEFAULT 0,
    rules TEXT NOT NULL DEFAULT '[]',
    body {blob} NOT NULL
);
CREATE INDEX IF NOT EXISTS events_received_at ON events (received_at);
CREATE INDEX IF NOT EXISTS events_session ON events (session_id);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    action TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    cycle_started_at DOUBLE PRECISION NOT NULL,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    last_error TEXT,
    last_status INTEGER,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_id);
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    duration DOUBLE PRECISION NOT NULL,
    outcome TEXT NOT NULL,
    http_status INTEGER,
    error TEXT,
    note TEXT
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id);
"""),
    Migration(2, "recovery: recovered events, sessions to check against Suki's status API, "
                 "on_failure deliveries' cause; the bounded record of refused requests", """
ALTER TABLE events ADD COLUMN recovered INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN cause TEXT;
CREATE TABLE IF NOT EXISTS recovery_sessions (
    session_id TEXT PRIMARY KEY,
    encounter_id TEXT,
    listed_by TEXT,
    first_seen DOUBLE PRECISION NOT NULL,
    next_check_at DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL,
    checks INTEGER NOT NULL DEFAULT 0,
    last_status TEXT,
    event_id TEXT,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS recovery_sessions_due ON recovery_sessions (state, next_check_at);
CREATE TABLE IF NOT EXISTS recovery_cursor (
    name TEXT PRIMARY KEY,
    received_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    id TEXT PRIMARY KEY,
    first_at DOUBLE PRECISION NOT NULL,
    last_at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    http_status INTEGER,
    skew_ms BIGINT,
    remote_addr TEXT,
    count INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS rejections_last_at ON rejections (last_at);
"""),
    Migration(3, "which config version routed each event, and when each was first used", """
CREATE TABLE IF NOT EXISTS config_versions (
    version TEXT PRIMARY KEY,
    first_used_at DOUBLE PRECISION NOT NULL,
    file TEXT NOT NULL,
    host TEXT NOT NULL
);
ALTER TABLE events ADD COLUMN config_version TEXT
"""),
    Migration(4, "console sessions signed out before they would have expired", """
CREATE TABLE IF NOT EXISTS console_signouts (
    nonce TEXT PRIMARY KEY,
    expires_at DOUBLE PRECISION NOT NULL
)
"""),
    Migration(5, "each action's failed attempts in a row, and whether it is paused", """
CREATE TABLE IF NOT EXISTS action_health (
    action TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    by_hand INTEGER NOT NULL DEFAULT 0,
    paused_at DOUBLE PRECISION,
    probe_at DOUBLE PRECISION,
    probe_every DOUBLE PRECISION,
    changed_at DOUBLE PRECISION,
    last_success_at DOUBLE PRECISION,
    last_error TEXT,
    last_error_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS action_health_state ON action_health (state)
"""),
    Migration(6, "the console's audit trail: sign-ins, payloads shown, repairs, refusals", """
CREATE TABLE IF NOT EXISTS console_audit (
    id TEXT PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    user_name TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT,
    client TEXT
);
CREATE INDEX IF NOT EXISTS console_audit_at ON console_audit (at)
"""),
    Migration(7, "console sign-in failures, counted for every worker and node", """
CREATE TABLE IF NOT EXISTS console_failures (
    key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    refused_until DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS console_failures_updated ON console_failures (updated_at)
"""),
    Migration(8, "when a claimer last reached the store: a lease does not run out unseen "
                 "while none could (ledger.py)", """
CREATE TABLE IF NOT EXISTS lease_clock (
    id INTEGER PRIMARY KEY,
    seen_at DOUBLE PRECISION NOT NULL
)
"""),
    Migration(9, "a delivery handed back while its attempt was under way: the next attempt "
                 "takes it over, as after a lease that ran out", """
ALTER TABLE deliveries ADD COLUMN cut_off INTEGER NOT NULL DEFAULT 0
"""),
]



def latest() -> int:
    return MIGRATIONS[-1].version


def current_version(tx: Tx) -> int:
    """The highest version applied; 0 for an empty database."""
    tx.exec("CREATE TABLE IF NOT EXISTS relay_schema (version INTEGER NOT NULL)")
    row = tx.one("SELECT max(version) AS v FROM relay_schema")
    return int(row["v"]) if row and row["v"] is not None else 0


def _refuse_newer(version: int) -> None:
    if version > latest():
        raise SchemaTooNew(f"the store's schema is version {version}, newer than this "
                           f"suki-relay's ({latest()}): upgrade suki-relay")


def ensure_schema(store: Backend) -> None:
    """Create or upgrade the schema, unless it is current (then no DDL, no locks)."""
    try:
        with store.tx(write=False) as tx:
            row = tx.one("SELECT max(version) AS v FROM relay_schema")
        version = row["v"] if row else None
    except Exception:  # no schema yet (if the store is unreachable, upgrading says so)
        version = None
    if version == latest():
        return
    if version is not None:
        _refuse_newer(version)
    with store.tx() as tx:
        store.lock_schema(tx)
        migrate(tx, store.blob_type)


def migrate(tx: Tx, blob_type: str) -> list[int]:
    """Apply every migration the database lacks, in order; returns the versions applied."""
    version = current_version(tx)
    _refuse_newer(version)
    applied = []
    for step in MIGRATIONS:
        if step.version <= version:
            continue
        for statement in step.sql.format(blob=blob_type).split(";"):
            if statement.strip():
                tx.exec(statement)
        tx.exec("INSERT INTO relay_schema (version) VALUES (?)", (step.version,))
        applied.append(step.version)
    return applied
