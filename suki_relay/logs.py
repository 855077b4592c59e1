"""Structured log lines: one per request, one per delivery attempt.

Callers pass only identifiers, outcomes, codes and durations; never payload content,
error details from targets, or secrets. ``--log-format json|text`` picks the rendering.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import deque
from typing import Any

from suki_relay.printable import LIMIT, printable

LOGGER = "suki_relay"
ENV_FORMAT = "SUKI_RELAY_LOG_FORMAT"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in getattr(record, "fields", {}).items():
            line[k] = v if not isinstance(v, str) or len(v) <= LIMIT else v[:LIMIT] + "\u2026"
        return json.dumps(line, default=str)  # json escapes control characters itself


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={printable(v)}" for k, v in fields.items() if v is not None)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created))
        return f"{stamp} {record.levelname.lower()} {record.getMessage()} {extra}".rstrip()


MAX_WAITING = 100_000  # lines kept while the output does not take them; the rest counted


class BatchWriter(logging.Handler):
    """Keeps records in memory; one thread formats and writes them every ``interval``
    seconds, in one write. A request thread only appends to a deque: it never waits on
    the output, and never wakes another thread (a wake-up per line costs more, under
    load, than the line). Warnings and errors are written at once.

    An output that takes nothing (a terminal paused, a log driver that blocks, a pipe
    nobody reads) must not grow the process without bound, a flood of refused requests
    logging a line each: past MAX_WAITING lines waiting, new ones are counted instead of
    kept, and once the output takes lines again a warning says how many were dropped."""

    def __init__(self, formatter: logging.Formatter, stream: Any, interval: float = 0.05):
        super().__init__()
        self.setFormatter(formatter)
        self.stream = stream
        self.interval = interval
        self.records: deque[logging.LogRecord] = deque()
        self.dropped = 0  # lines not kept since the last write (MAX_WAITING)
        self._dropping = threading.Lock()
        self.wake = threading.Event()
        self.running = True
        self.thread = threading.Thread(target=self._run, name="suki-relay-log", daemon=True)
        self.thread.start()

    def handle(self, record: logging.LogRecord) -> bool:  # no handler lock: deque is atomic
        if len(self.records) >= MAX_WAITING:
            with self._dropping:
                self.dropped += 1
            return True
        self.records.append(record)
        if record.levelno >= logging.WARNING:
            self.wake.set()
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)

    def _run(self) -> None:
        while self.running:
            self.wake.wait(self.interval)
            self.wake.clear()
            self.write_out()

    def write_out(self) -> None:
        lines = []
        with self._dropping:
            dropped, self.dropped = self.dropped, 0
        if dropped:
            note = logging.LogRecord(LOGGER, logging.WARNING, __file__, 0, "log lines dropped: "
                                     "the output did not take them", None, None)
            note.fields = {"dropped": dropped}
            lines.append(self.format(note))
        while True:
            try:
                record = self.records.popleft()
            except IndexError:
                break
            try:
                lines.append(self.format(record))
            except Exception:
                self.handleError(record)
        if lines:
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        """Stop the thread, then write out what is left."""
        self.running = False
        self.wake.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=5)
        self.write_out()
        super().close()


_writer: BatchWriter | None = None


def formatter(fmt: str | None = None) -> logging.Formatter:
    """The relay's line format: ``fmt``, else $SUKI_RELAY_LOG_FORMAT, else text."""
    fmt = fmt or os.environ.get(ENV_FORMAT, "text")
    return JsonFormatter() if fmt == "json" else TextFormatter()


def setup(fmt: str | None = None, level: int = logging.INFO) -> None:
    """Log through a batch writer (idempotent: a new setup replaces the last)."""
    global _writer
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    flush()
    _writer = BatchWriter(formatter(fmt), sys.stderr)
    logger.addHandler(_writer)
    logger.propagate = False


def running() -> bool:
    return _writer is not None


def flush() -> None:
    """Write out what is buffered and stop the writer (the last part a process stops, and
    before a new setup). A process that never stops it (a CLI command) is written out at
    exit by the logging module's own shutdown, which closes every handler."""
    global _writer
    if _writer is not None:
        logging.getLogger(LOGGER).removeHandler(_writer)
        _writer.close()
        _writer = None


def forked() -> None:
    """In a process just forked (gunicorn's post_fork hook): the parent's writer thread is
    not here, and its buffered lines are the parent's to write. Drop them, and start afresh
    with the same output. (The copy stays known to logging, which closes every handler at
    exit; emptied, it then writes nothing.)"""
    global _writer
    if _writer is not None:
        old, _writer = _writer, None
        old.running = False
        old.records.clear()
        logger = logging.getLogger(LOGGER)
        logger.removeHandler(old)
        _writer = BatchWriter(old.formatter or TextFormatter(), old.stream, old.interval)
        logger.addHandler(_writer)


def event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, msg, extra={"fields": fields})
