"""The operator's view of this node's spool: what waits there for the store (`spool`),
one spooled event (`show` falls back to it), and a note from `events` when any wait."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from suki_relay.cli.output import _when, emit, event_head, payload_text, store_settings, table
from suki_relay.errors import RelayError
from suki_relay.printable import printable
from suki_relay.store.spool import Spool, open_spool


@contextmanager
def spool_of(config: Any) -> Iterator[Spool | None]:
    """The node's spool (None if the config has none), closed when the command is done."""
    spool = open_spool(config)
    try:
        yield spool
    finally:
        if spool is not None:
            spool.close()


def spool_note(config: Any) -> str | None:
    """A line saying how many events wait in this node's spool, if any do."""
    with spool_of(config) as spool:
        summary = spool.summary() if spool is not None else {"spooled": 0, "set_aside": 0}
    n, aside = summary["spooled"], summary["set_aside"]
    notes = [f"{n} events waiting in this node's spool for the store"] if n else []
    notes += [f"{aside} unreadable spooled records set aside"] if aside else []
    return f"{'; '.join(notes)} (suki-relay spool)" if notes else None


def cmd_spool(args: argparse.Namespace) -> int:
    with spool_of(store_settings(args)) as spool:
        if spool is None:
            raise RelayError("this config has no spool (it is used only with a PostgreSQL "
                             "store, and `spool: {enabled: false}` turns it off)")
        rows = spool.listing(args.limit)
    for r in rows:
        r["received"] = _when(r["received_at"])
        r["status"] = "SET ASIDE" if r["set_aside"] else \
            "MALFORMED" if r["malformed"] else r["status"]
        r["planned"] = ",".join(r["actions"]) or "unmatched"
    emit(args, rows, table(rows, ["id", "received", "status", "session_id", "encounter_id",
                                  "planned", "drain_error"]))
    return 0


def show_spooled(args: argparse.Namespace, config: Any, event_id: str) -> bool:
    """`show` for an event waiting in this node's spool; False if it is not there."""
    with spool_of(config) as spool:
        event = spool.get(event_id) if spool is not None else None
    if event is None:
        return False
    body = event.pop("body")
    event["spooled"] = True
    lines = [*event_head(event["id"], event["received_at"],
                         None if event["malformed"] else event["status"],
                         event["session_id"], event["encounter_id"]),
             "spooled: set aside in this node's spool, unreadable; never moved to the store "
             "(its payload: --payload)" if event["set_aside"] else
             "spooled: waiting in this node's spool for the store; nothing is delivered "
             "before it is moved there",
             f"rules matched: {', '.join(event['rules']) or '(none)'}",
             f"deliveries planned: {', '.join(event['actions']) or '(none)'}"]
    if event["drain_error"]:
        lines.append(f"last move failed: {printable(event['drain_error'])}")
    if args.payload:
        event["payload"] = body.decode("utf-8", "replace")
        lines.append(payload_text(event["payload"]))
    emit(args, event, "\n".join(lines))
    return True
