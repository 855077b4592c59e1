"""Log output: written in batches by one thread, warnings at once, nothing left at exit."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time

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


def test_an_output_that_takes_nothing_does_not_grow_the_process(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A pipe nobody reads (a paused terminal, a log driver that blocks): the writer thread
    waits in its write, and lines logged meanwhile are kept up to MAX_WAITING, then
    counted; once the output takes lines again, a warning says how many were dropped."""
    monkeypatch.setattr(logs, "MAX_WAITING", 1000, raising=False)
    read_end, write_end = os.pipe()
    out = os.fdopen(write_end, "w")
    writer = logs.BatchWriter(logs.TextFormatter(), out, interval=0.01)
    record = logging.LogRecord("suki_relay.test", logging.INFO, __file__, 0, "request " + "x" * 200,
                               None, None)
    try:
        for _ in range(1000):  # more than the pipe holds: the writer is stuck in its write
            writer.handle(record)
        time.sleep(0.3)
        for _ in range(20_000):
            writer.handle(record)
        assert len(writer.records) <= 1000
        got = bytearray()

        os.set_blocking(read_end, False)

        def read() -> bool:
            with contextlib.suppress(BlockingIOError):
                got.extend(os.read(read_end, 1 << 20))
            return b"log lines dropped" in got

        wait_until(read, 10, 0.01, "the count of dropped lines")
    finally:
        writer.running = False
        os.close(read_end)
        with contextlib.suppress(OSError):
            out.close()
    assert b"dropped=" in got
