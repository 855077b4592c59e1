"""A spooled record that cannot be read back is set aside; it holds back none of the others."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from suki_relay.store import NewEvent
from suki_relay.store.spool import Spool
from suki_relay.testing import unique_body, wait_until

from .conftest import LogRecords, cli_here
from .test_spool import answer, delivered_events, metrics_text, readyz, spooling_relay  # noqa: F401

SET_ASIDE = "spooled record cannot be read; set aside, the rest drain"


def spoil(spool_file: Path, seq: int, event: str) -> None:
    with closing(sqlite3.connect(spool_file)) as db, db:  # closed, not only committed
        db.execute("UPDATE spooled SET event = ? WHERE seq = ?", (event, seq))


def test_a_spoiled_record_is_set_aside_and_the_rest_drain(  # type: ignore[no-untyped-def]
        tmp_path: Path, spooling_relay, private_db, sink,  # noqa: F811
        relay_log: LogRecords) -> None:
    target = sink()
    relay = spooling_relay(target.url)
    private_db.down()
    bodies = [unique_body() for _ in range(3)]
    ids = []
    for body in bodies:
        status, answered = answer(relay.post_signed(body))
        assert (status, answered["spooled"]) == (200, True)
        ids.append(answered["event_id"])
    spool_file = tmp_path / "suki-relay-spool.db"
    with closing(sqlite3.connect(spool_file)) as db:
        oldest = db.execute("SELECT seq, event FROM spooled ORDER BY seq LIMIT 1").fetchone()
    spoil(spool_file, oldest[0], oldest[1][: len(oldest[1]) // 2])  # cut off mid-JSON
    private_db.up()

    wait_until(lambda: sorted(delivered_events(target)) == sorted(ids[1:]), timeout=30,
               message="the two readable events delivered")
    time.sleep(1.5)  # several drain passes: the record is logged once, not every pass
    assert [fields["event_id"] for msg, fields in relay_log.lines if msg == SET_ASIDE] == [ids[0]]
    assert ids[0] not in delivered_events(target)
    assert "draining the spool failed" not in relay_log.text()
    assert readyz(relay)[1].get("spooled", 0) == 0
    assert relay.app.spool.has_waiting() is False  # the gap watcher is not held back by it
    assert "suki_relay_spool_set_aside 1.0" in metrics_text(relay)

    listed = cli_here("spool", "--json", cwd=tmp_path)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["status"], r["set_aside"]) for r in rows] == \
        [(ids[0], "SET ASIDE", True)]
    assert rows[0]["drain_error"] == "unreadable record: JSONDecodeError"
    shown = cli_here("show", ids[0], "--payload", cwd=tmp_path)
    assert shown.returncode == 0 and "set aside" in shown.stdout
    assert json.loads(bodies[0])["session_id"] in shown.stdout  # the body is kept whole
    assert "set aside" in cli_here("events", cwd=tmp_path).stdout + \
        cli_here("events", cwd=tmp_path).stderr


def test_every_kind_of_spoiled_record_is_set_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", 100)
    try:
        events = [NewEvent(f"k{i}", unique_body(), 1, "failure", f"s{i}", None, False,
                           ["all"], ["target"]) for i in range(6)]
        spool.add(events)
        good = json.loads(json.dumps({"id": events[0].id}))
        spoiled = ["[1, 2]", json.dumps({**good, "unknown": 1}), json.dumps(good),
                   json.dumps({"id": "evt_other", "dedup_key": "k", "generated_at": 1,
                               "status": "x", "session_id": None, "encounter_id": None,
                               "malformed": False, "rules": [], "actions": []}),
                   "null"]
        for seq, text in enumerate(spoiled, start=1):
            spoil(tmp_path / "spool.db", seq, text)
        assert [e.id for e in spool.oldest(100)] == [events[5].id]
        assert spool.summary()["set_aside"] == 5 and spool.summary()["spooled"] == 1
        assert spool.oldest(100)[0].id == events[5].id  # set aside once, not again
        assert sum(r["set_aside"] for r in spool.listing()) == 5
    finally:
        spool.close()
