"""Log output: written in batches by one thread, warnings at once, nothing left at exit."""

from __future__ import annotations

import io
import json
import logging

from suki_relay import logs
from suki_relay.testing import wait_until


def test_lines_are_batched_warnings_are_written_at_once_and_close_writes_the_rest() -> None:
    out = io.StringIO()
    writer = logs.BatchWriter(logs.JsonFormatter(), out, interval=60)
    logger = logging.getLogger("suki_relay.test-batch")
    logger.addHandler(writer)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logs.event(logger, "request", outcome="accepted", event_id="evt_1")
        assert out.getvalue() == ""  # an info line waits for the next batch
        logs.event(logger, "store unavailable", logging.WARNING, outcome="store_unavailable")
        wait_until(lambda: out.getvalue().count("\n") == 2, 5, 0.01, "the warning")
        logs.event(logger, "request", outcome="duplicate", event_id="evt_2")
    finally:
        logger.removeHandler(writer)
        writer.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["msg"], x.get("outcome")) for x in lines] == [
        ("request", "accepted"), ("store unavailable", "store_unavailable"),
        ("request", "duplicate")]
