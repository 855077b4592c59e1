"""User-caused errors at the command line are messages, never tracebacks (in-process)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from suki_relay.cli.main import main
from suki_relay.store import open_store
from suki_relay.testing import unique_body


def run(tmp_path: Path, config: str, *args: str,
        capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    (tmp_path / "actions.yaml").write_text(config)
    code = main(["-c", str(tmp_path / "actions.yaml"), *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


UNREACHABLE = "postgresql://127.0.0.1:1/nope?connect_timeout=1&pool_timeout=1"


@pytest.mark.parametrize("args", [["events"], ["show", "evt_x"], ["deliveries"],
                                  ["replay", "--failed"], ["prune", "--older-than", "30d"]])
def test_store_commands_against_unreachable_postgresql(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, _, err = run(tmp_path, f"receiver: {{secret: s}}\nstore: {UNREACHABLE}\n", *args,
                       capsys=capsys)
    assert code == 1
    assert err.startswith("error: the store"), err
    assert "unavailable" in err or "cannot be reached" in err, err


def test_store_commands_against_a_newer_schema(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    open_store("sqlite:///relay.db", tmp_path).close()
    with sqlite3.connect(tmp_path / "relay.db") as conn:
        conn.execute("INSERT INTO relay_schema (version) VALUES (999)")
    conn.close()
    for args in (["events"], ["show", "evt_x"], ["deliveries"], ["replay", "--failed"],
                 ["prune", "--older-than", "30d"], ["reroute", "evt_x"]):
        code, _, err = run(tmp_path, "receiver: {secret: s}\nstore: sqlite:///relay.db\n", *args,
                           capsys=capsys)
        assert code == 1 and err.startswith("error: ") and "newer than this" in err and "upgrade" in err, err


def test_read_only_commands_need_only_the_store_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = """receiver:
  secrets: ["${NEVER_SET_IN_TESTS_WEBHOOK}"]
store: sqlite:///relay.db
actions:
  chat: {type: slack, webhook_url: "${NEVER_SET_IN_TESTS_SLACK}"}
"""
    for args in (["events"], ["deliveries"], ["show", "evt_missing"]):
        code, _, err = run(tmp_path, config, *args, capsys=capsys)
        assert "NEVER_SET" not in err, err
    assert code == 1 and "no event evt_missing" in err
    code, _, err = run(tmp_path, config, "check", capsys=capsys)
    assert code == 1 and "NEVER_SET_IN_TESTS_WEBHOOK is not set" in err


def test_routes_test_expect_prints_expected_against_matched(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = """receiver: {secret: s}
actions:
  fwd: {type: http, url: "http://127.0.0.1:9/x"}
rules:
  - {name: failures, when: {status: failure}, do: [fwd]}
"""
    code, _, err = run(tmp_path, config, "routes", "test", "success", "--expect", "failures",
                       capsys=capsys)
    assert code == 1
    assert "expected: failures" in err and "matched:  rules (none); actions (none)" in err


def test_status_typos_fail_check_and_undocumented_statuses_warn(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = """receiver: {secret: s}
store: sqlite:///relay.db
actions:
  fwd: {type: http, url: "http://127.0.0.1:9/x"}
rules:
  - {name: r, when: {status: %s}, do: [fwd]}
"""
    code, _, err = run(tmp_path, base % "sucess", "check", capsys=capsys)
    assert code == 1 and ":6: rule 'r'.when.status: 'sucess' is no status" in err, err
    assert "did you mean 'success'?" in err
    code, _, err = run(tmp_path, base % "sucess", "routes", "test", "success", capsys=capsys)
    assert code == 1 and "did you mean 'success'?" in err
    code, _, err = run(tmp_path, base % "timeout", "check", capsys=capsys)
    assert code == 0 and "warning: rule 'r'.when.status: 'timeout'" in err, err
    code, _, err = run(tmp_path, base % "[failure, success]", "check", capsys=capsys)
    assert code == 0 and "warning" not in err


def test_a_status_seen_in_the_store_is_known(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from suki_relay.receive.record import to_event
    from suki_relay.receive.verify import Verified

    config = """receiver: {secret: s}
store: sqlite:///relay.db
rules:
  - {name: r, when: {status: session_timed_out}, do: []}
"""
    (tmp_path / "actions.yaml").write_text(config)
    from suki_relay.config.load import load_config

    loaded = load_config(tmp_path / "actions.yaml")
    store = open_store("sqlite:///relay.db", tmp_path)
    body = unique_body("failure", status="session_timed_out")
    assert json.loads(body)["status"] == "session_timed_out"
    store.record([to_event(body, Verified(1, "ab" * 32), loaded)])
    store.close()
    code, _, err = run(tmp_path, config, "check", capsys=capsys)
    assert code == 0 and "warning" not in err, err


@pytest.mark.parametrize(("query", "expected"), [
    ("pool_size=ten", "store: query parameter pool_size: expected a positive integer"),
    ("pool_timeout=-1", "store: query parameter pool_timeout: expected a positive number"),
    ("connect_timeout=soon", "store: query parameter connect_timeout: expected a whole number"),
    ("pool_sise=3", "store: query parameter 'pool_sise': unknown"),
])
def test_a_bad_store_url_query_is_a_check_error_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], query: str, expected: str) -> None:
    config = f"receiver: {{secret: s}}\nstore: postgresql://relay:hunter2@127.0.0.1:1/db?{query}\n"
    code, out, err = run(tmp_path, config, "check", capsys=capsys)
    assert code == 1 and f":2: {expected}" in out + err, out + err
    assert "hunter2" not in out + err
    code, out, err = run(tmp_path, config, "events", capsys=capsys)  # once a traceback
    assert code == 1 and expected in err, err
