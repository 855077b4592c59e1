"""What every CLI command shares: tables, --json, the config and store settings it reads,
and an event's heading as `show` prints it (for the store and the spool alike)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from suki_relay.printable import printable


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def table(rows: list[dict[str, Any]], columns: list[str], limit: int = 200) -> str:
    """Rows as aligned columns; payload values escaped and cut (see printable.py)."""
    cells = [[printable(r[c], limit) if r.get(c) is not None else "-" for c in columns]
             for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def config_of(args: argparse.Namespace) -> Any:
    from suki_relay.config.load import load_config

    return load_config(args.config)


def store_settings(args: argparse.Namespace) -> Any:
    """Only the config's store settings (store:, spool:): all that the store commands that
    need no rules read, so the webhook secret and other settings need not be set."""
    from suki_relay.config.load import load_store_settings

    return load_store_settings(args.config)


def event_head(event_id: str, received_at: float, status: str | None,
               session_id: str | None, encounter_id: str | None, note: str = "") -> list[str]:
    """The first lines of `show` for an event (in the store or the spool), payload values
    escaped; ``status`` None: malformed."""
    shown = "MALFORMED" if status is None else printable(status)
    return [f"event {event_id}  received {_when(received_at)}  status {shown}{note}",
            f"session {printable(session_id)}  encounter {printable(encounter_id)}"]


def payload_text(payload: str) -> str:
    return "\npayload:\n" + printable(payload, None, keep_newlines=True)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
