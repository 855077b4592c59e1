"""The record of refused requests: what it keeps, what it never keeps, and its bounds."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from suki_relay import protocol
from suki_relay.receive.rejections import MAX_KEYS, OVERFLOW, RejectionLog, expired_hint, skew_ms
from suki_relay.store.refusals import KEEP, Rejection
from suki_relay.testing import SECRET

from .conftest import cli_here, open_test_store

BODY = json.dumps({"status": "success", "session_id": "s-1",
                   "note": "PHI-BODY-TEXT"}).encode()


def test_refusals_are_listed_with_skew_and_never_the_body(write_config: Any, local_relay: Any,
                                                          relay_log: Any, tmp_path: Path) -> None:
    relay = local_relay(write_config(), deliver=False)

    def listed() -> list[dict[str, Any]]:
        relay.app.rejections.flush()  # the writer thread does this every second
        result = cli_here("events", "--rejected", "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout))

    def send(headers: dict[str, str]) -> Any:
        return relay.post(BODY, headers, environ_base={"REMOTE_ADDR": "192.0.2.7"})

    stale = send(protocol.signed_headers(SECRET, BODY, now=time.time() - 600))  # 10 min old
    assert stale.status_code == 401 and stale.json["error"] == "expired"
    [row] = listed()
    assert (row["reason"], row["http_status"], row["remote_addr"], row["count"]) == (
        "expired", 401, "192.0.2.7", 1)
    assert 599_000 < row["skew_ms"] < 660_000

    in_seconds = str(int(time.time()))
    assert send({"generated-at": in_seconds, "Content-Type": "application/json",
                 "X-API-Key": protocol.signature(SECRET, in_seconds, BODY)}
                ).json["error"] == "expired"
    for _ in range(3):
        assert send(protocol.signed_headers("not-the-secret", BODY)).json["error"] == \
            "bad_signature"
    rows = listed()
    assert sum(r["count"] for r in rows) == 5
    assert rows[-1] == row  # newest first
    assert [r["skew_ms"] > 10**12 for r in rows if r["reason"] == "expired"] == [True, False]
    [bad] = [r for r in rows if r["reason"] == "bad_signature"]  # alike: one row
    assert bad["count"] == 3 and abs(bad["skew_ms"]) < 60_000

    table = cli_here("events", "--rejected", cwd=tmp_path).stdout
    assert "bad_signature" in table and "SKEW_MS" in table
    hints = [fields["hint"] for message, fields in relay_log.lines
             if message == "request refused" and fields.get("outcome") == "expired"]
    assert hints[0].startswith("generated-at is Unix time in milliseconds")
    assert hints[1].startswith("generated-at looks like seconds")
    assert "PHI-BODY-TEXT" not in relay_log.text() + table + json.dumps(rows)


def test_expired_hint_and_skew() -> None:
    now = 1_800_000_000.0
    assert skew_ms(str(int(now * 1000) - 1500), now) == 1500
    assert skew_ms("12a", now) is None and skew_ms(None, now) is None
    assert "seconds" in expired_hint(skew_ms(str(int(now)), now) or 0, now)
    assert "microseconds" in expired_hint(skew_ms(str(int(now * 1e6)), now) or 0, now)
    assert "clocks" in expired_hint(400_000, now)


def test_a_flood_stays_bounded_and_counted(tmp_path: Path) -> None:
    store = open_test_store(f"sqlite:///{tmp_path / 'r.db'}")
    record = RejectionLog(store, flush_seconds=3600)  # flushed by hand below
    for i in range(50_000):
        record.add("bad_signature", 401, 5, f"10.0.{i % 5000 // 250}.{i % 250}")
    assert len(record._tally) == MAX_KEYS + 1  # distinct addresses beyond MAX_KEYS: `other`
    assert record.flush() == MAX_KEYS + 1
    rows = store.rejections(limit=10_000)
    assert sum(r.count for r in rows) == 50_000
    assert next(r for r in rows if r.reason == OVERFLOW).remote_addr is None

    now = time.time()
    store.add_rejections([Rejection(now + i, now + i, "expired", 401, 1, "10.9.9.9")
                          for i in range(KEEP + 500)])
    rows = store.rejections(limit=10_000)
    assert len(rows) == KEEP  # the newest KEEP rows stay
    assert rows[0].last_at == now + KEEP + 499
