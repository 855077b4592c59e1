"""`suki-relay serve`: gunicorn's own lines come out in the relay's log format."""

from __future__ import annotations

import json
import logging

import pytest
from gunicorn.config import Config

from suki_relay.serve.gunicorn import RelayLogger


def line(fmt: str | None, monkeypatch: pytest.MonkeyPatch) -> str:
    if fmt:
        monkeypatch.setenv("SUKI_RELAY_LOG_FORMAT", fmt)
    else:
        monkeypatch.delenv("SUKI_RELAY_LOG_FORMAT", raising=False)
    logger = RelayLogger(Config())
    handler = [h for h in logger.error_log.handlers if getattr(h, "_gunicorn", False)][-1]
    record = logging.LogRecord("gunicorn.error", logging.INFO, __file__, 1, "Booting worker with "
                               "pid: %s", (42,), None)
    return handler.format(record)


def test_gunicorn_lines_use_the_text_format(monkeypatch: pytest.MonkeyPatch) -> None:
    text = line(None, monkeypatch)
    assert text.endswith(" info Booting worker with pid: 42") and "[INFO]" not in text


def test_gunicorn_lines_use_the_json_format(monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.loads(line("json", monkeypatch))
    assert data["level"] == "info" and data["msg"] == "Booting worker with pid: 42"
    assert data["logger"] == "gunicorn.error"
