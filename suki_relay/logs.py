"""Structured log lines: one per request, one per delivery attempt.

Callers pass only identifiers, outcomes, codes and durations; never payload content,
error details from targets, or secrets. ``--log-format json|text`` picks the rendering.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import sys
import time
from typing import Any

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
        line.update(getattr(record, "fields", {}))
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created))
        return f"{stamp} {record.levelname.lower()} {record.getMessage()} {extra}".rstrip()


_listener: logging.handlers.QueueListener | None = None


def setup(fmt: str | None = None, level: int = logging.INFO) -> None:
    """Log through a queue: request threads never wait on the output (idempotent)."""
    global _listener
    fmt = fmt or os.environ.get(ENV_FORMAT, "text")
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    if _listener is not None:
        _listener.stop()
    for handler in list(logger.handlers):
        if getattr(handler, "_suki_relay", False):
            logger.removeHandler(handler)
    output = logging.StreamHandler(sys.stderr)
    output.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = logging.handlers.QueueHandler(records)
    handler.prepare = lambda record: record  # type: ignore[method-assign]  # format on output
    handler._suki_relay = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False
    _listener = logging.handlers.QueueListener(records, output)
    _listener.start()


def flush() -> None:
    """Write out what is queued (at exit, and after fork in the child)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


atexit.register(flush)


def event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, msg, extra={"fields": fields})
