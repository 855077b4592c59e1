"""The ledger: one interface (base.Store), two backends chosen by the `store:` URL."""

from __future__ import annotations

from pathlib import Path

from .base import (
    DONE,
    FAILED,
    IN_FLIGHT,
    PENDING,
    Claimed,
    ClaimRequest,
    EventFilter,
    NewEvent,
    Outcome,
    Recorded,
    Store,
    StoreUnavailable,
)

__all__ = ["DONE", "FAILED", "IN_FLIGHT", "PENDING", "ClaimRequest", "Claimed", "EventFilter",
           "NewEvent", "Outcome", "Recorded", "Store", "StoreUnavailable", "open_store"]


def open_store(url: str, base_dir: Path | None = None, lazy: bool = False) -> Store:
    """sqlite:///relative/path (relative to base_dir), sqlite:////abs/path, postgresql://...

    ``lazy``: a PostgreSQL store that cannot connect now opens anyway (see PostgresStore)."""
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteStore

        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        return SqliteStore(path)
    if url.startswith(("postgresql:", "postgres:")):
        from .postgres import PostgresStore

        return PostgresStore(url, lazy=lazy)
    raise ValueError("store URL must start with sqlite:/// or postgresql://")
