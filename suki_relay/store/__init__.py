"""The ledger: one interface (base.Store), two backends chosen by the `store:` URL."""

from __future__ import annotations

from pathlib import Path

from ..errors import RelayError, StoreUnavailable
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
)

__all__ = ["DONE", "FAILED", "IN_FLIGHT", "PENDING", "ClaimRequest", "Claimed", "EventFilter",
           "NewEvent", "Outcome", "Recorded", "Store", "StoreUnavailable", "open_store",
           "url_problem"]


def url_problem(url: str) -> str | None:
    """What is wrong with a store URL, or None: the one rule for `check` and open_store()."""
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return None
    if url.startswith(("postgresql://", "postgres://")):
        return None
    return "expected sqlite:///relative/path, sqlite:////absolute/path or postgresql://..."


def open_store(url: str, base_dir: Path | None = None) -> Store:
    """sqlite:///relative/path (relative to base_dir), sqlite:////abs/path, postgresql://...

    Raises RelayError for a URL that url_problem() refuses, StoreUnavailable when the
    store cannot be reached, StoreIncompatible for a schema newer than this relay."""
    problem = url_problem(url)
    if problem is not None:
        raise RelayError(f"store: {problem}")
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteStore

        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        return SqliteStore(path)
    if url.startswith(("postgresql:", "postgres:")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    raise AssertionError(url)  # url_problem() refused everything else
