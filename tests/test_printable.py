"""Payload text cannot forge a log line or drive a terminal, and long values are cut."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from suki_relay import logs
from suki_relay.printable import printable
from suki_relay.receive.record import commit, recorder, to_event
from suki_relay.receive.verify import Verified
from suki_relay.testing import build_config

from .conftest import open_test_store, run_cli

FORGED = "x\n2026-01-01 00:00:00 error forged line\x1b[2J\u2028\x85"


def _record(**fields: object) -> logging.LogRecord:
    record = logging.LogRecord("suki_relay.receiver", logging.INFO, __file__, 1, "request",
                               None, None)
    record.fields = fields  # type: ignore[attr-defined]
    return record


def test_a_newline_in_a_payload_value_stays_on_its_log_line() -> None:
    text = logs.TextFormatter().format(_record(status=FORGED, session_id="s\r\n" + "s" * 1200))
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert "\u2028" not in text and "\x85" not in text
    assert "status=x\\x0a2026-01-01" in text
    assert len(text) < 600  # 1,200 characters of session id cut to 200
    line = json.loads(logs.JsonFormatter().format(_record(status=FORGED, session_id="s" * 999)))
    assert line["status"] == FORGED and len(line["session_id"]) == 201


def test_printable_leaves_ordinary_text_alone() -> None:
    assert printable("caf\u00e9 \u4e2d\u6587 failure-1.2") == "caf\u00e9 \u4e2d\u6587 failure-1.2"
    assert printable(42) == "42"
    assert printable("a\ud800") == "a\\ud800"
    assert printable("line1\nline2\x1b", None, keep_newlines=True) == "line1\nline2\\x1b"


def test_cli_tables_escape_payload_values(tmp_path: Path) -> None:
    config = build_config({"store": "sqlite:///relay.db"}, tmp_path)
    store = open_test_store("sqlite:///relay.db", tmp_path)
    body = json.dumps({"status": FORGED, "session_id": "\x1b]0;owned\x07" + "s" * 500}).encode()
    event = to_event(body, Verified(1, "ab" * 32), config)
    _, recorded = commit(recorder(store), event)
    listing = run_cli("events", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "\x1b" not in listing.stdout and "\x07" not in listing.stdout
    assert len(listing.stdout.splitlines()) == 2  # the header and one row
    shown = run_cli("show", recorded.event_id, "--payload", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "status x\\x0a2026" in shown.stdout


def test_show_escapes_an_event_waiting_in_the_spool(tmp_path: Path) -> None:
    """The same for an event still in this node's spool (the database unreachable)."""
    from suki_relay.store.spool import Spool
    from suki_relay.testing import free_port

    url = f"postgresql://127.0.0.1:{free_port()}/nowhere?connect_timeout=1"
    (tmp_path / "actions.yaml").write_text(json.dumps({"store": url}))
    config = build_config({"store": url}, tmp_path)
    body = json.dumps({"status": FORGED, "session_id": "\x1b]0;owned\x07s"}).encode()
    event = to_event(body, Verified(1, "ab" * 32), config)
    spool = Spool(tmp_path / "suki-relay-spool.db", 10)
    try:
        spool.add([event])
    finally:
        spool.close()
    shown = run_cli("show", event.id, "--payload", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "spooled: waiting" in shown.stdout
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "status x\\x0a2026" in shown.stdout
