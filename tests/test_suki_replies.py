"""Whatever Suki's API answers is parsed by one bounded parser: a hostile or broken reply
is an ordinary error for that session or attempt, never a traceback that stops the rest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from suki_relay.config.load import load_config
from suki_relay.errors import RetryableError
from suki_relay.protocol import MAX_JSON_DEPTH, parse_json
from suki_relay.recover.recovery import GapWatcher, Recoverer
from suki_relay.store.sessions import Listed
from suki_relay.testing import Received, Reply, SukiStandIn, attempt_once, build_spec, make_delivery

from .conftest import cli_here, open_test_store
from .test_recovery import ENCOUNTER, write_config

DEEP = b'{"status": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"  # past any recursion limit


class HostileSuki(SukiStandIn):
    """Answers ``DEEP`` for the status of session ``deep`` and for the content of ``deep``."""

    def handle(self, got: Received) -> Reply:
        reply = super().handle(got)
        if reply.status == 200 and "/session/deep/" in got.path:
            return Reply(200, DEEP)
        return reply


@pytest.mark.parametrize("text, ok", [
    (b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, True),
    (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), False),
    (b'{"a": ' * 5000 + b"1" + b"}" * 5000, False),
    (DEEP, False), (b"NaN", False), (b'{"x": Infinity}', False), (b"\xff\xfe{", False),
    (b'{"a": [1, {"b": null}], "c": "\\u00e9"}', True), (b"7", True),
    (b"[1e999]", False), (b'{"x": -1e400}', False), (b"[1e308, -2.5e-400]", True),
])
def test_parse_json_is_bounded_and_fails_with_value_error(text: bytes, ok: bool) -> None:
    if ok:
        parse_json(text)
    else:
        with pytest.raises(ValueError):
            parse_json(text)


@pytest.mark.parametrize("text", [b"\xff\xfePHI", b"PHI", b'{"PHI": NaN}', b"[1e999]",
                                  b"[" * 101 + b"]" * 101])
def test_parse_json_errors_quote_nothing_of_the_document(text: bytes) -> None:
    with pytest.raises(ValueError) as info:
        parse_json(text)
    assert "PHI" not in str(info.value) and "0x" not in str(info.value)


def test_recover_handles_the_next_session_after_a_hostile_reply(tmp_path: Path) -> None:
    with HostileSuki(statuses={"deep": "completed", "good": "completed"}) as suki:
        write_config(tmp_path, suki)
        result = cli_here("recover", "deep", "good", cwd=tmp_path)
    assert "Traceback" not in result.stderr
    rows = [line.split()[:2] for line in result.stdout.strip().splitlines()]
    assert rows[-2:] == [["deep", "error"], ["good", "recovered"]]  # after a header, if any
    assert result.returncode == 1


def test_the_gap_watcher_gives_up_on_a_session_whose_reply_is_hostile(tmp_path: Path) -> None:
    with HostileSuki(statuses={"deep": "completed"}) as suki:
        config = load_config(write_config(tmp_path, suki, recovery={
            "grace_seconds": 1, "check_every_seconds": 1, "give_up_after_hours": 0.0005}))
        store = open_test_store(config.store_url, config.base_dir)
        store.note_listed([Listed("deep", ENCOUNTER, "evt_x", time.time() - 10)], 1)
        watcher = GapWatcher(config, store, Recoverer(config, store))
        assert [(r.session_id, r.outcome) for r in watcher.run_once()] == [("deep", "error")]
        assert {r.session_id: r.state for r in store.recovery_sessions()} == {"deep": "given_up"}


def test_a_hostile_document_is_a_retryable_failure_of_the_attempt(tmp_path: Path) -> None:
    event: dict[str, Any] = {"status": "success", "session_id": "deep", "_links": {
        "contents": [{"href": "/api/v1/ambient/session/deep/content"}]}}
    with HostileSuki() as suki:
        spec = build_spec("fetch_note", {"directory": str(tmp_path / "notes")}, tmp_path,
                          suki=suki.settings())
        with pytest.raises(RetryableError, match=r"fetch contents: .*not JSON"):
            attempt_once(spec, make_delivery(event))
    assert not (tmp_path / "notes").exists() or not any((tmp_path / "notes").iterdir())
