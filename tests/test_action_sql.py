"""The sql action against the machine's PostgreSQL (a schema, a database or a server of
the test's own) and SQLite files."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from suki_relay.config.check import sample
from suki_relay.config.load import ActionSpec
from suki_relay.deliver.fetch import note_text
from suki_relay.errors import ConfigError, PermanentError, RetryableError
from suki_relay.testing import (
    NOTE,
    SECRET,
    SukiStandIn,
    attempt_once,
    build_spec,
    in_thread,
    make_delivery,
    unique_body,
    wait_until,
)

from .conftest import check_fails, cli_here, run_cli

UPSERT = ("INSERT INTO notes (session_id, status, note, received_at) "
          "VALUES (:session_id, :status, :note, :received_at) "
          "ON CONFLICT (session_id) DO UPDATE SET status = excluded.status, "
          "note = excluded.note, received_at = excluded.received_at")
TABLE = ("CREATE TABLE notes (session_id TEXT PRIMARY KEY, status TEXT NOT NULL, "
         "note TEXT, received_at TEXT)")
PARAMS = {"session_id": "{{ event.session_id }}", "status": "{{ event.status }}",
          "note": "{{ event.error_detail | default('') }}", "received_at": "{{ received_at }}"}
FAST_RETRY = {"initial_seconds": 0.2, "max_seconds": 0.5, "max_attempts": 50}


class Target:
    """A database the action writes to: its URL as actions.yaml gives it, and a way for
    the test to run SQL there itself."""

    def __init__(self, kind: str, url: str, run: Callable[[str, tuple[Any, ...]], list[Any]]):
        self.kind, self.url, self._run = kind, url, run

    def sql(self, statement: str, *params: Any) -> list[Any]:
        return self._run(statement, params)


def _sqlite_target(folder: Path) -> Target:
    path = folder / "notes.db"

    def run(statement: str, params: tuple[Any, ...]) -> list[Any]:
        conn = sqlite3.connect(path)
        try:
            with conn:
                return conn.execute(statement, params).fetchall()
        finally:
            conn.close()

    return Target("sqlite", "sqlite:///notes.db", run)  # relative to actions.yaml


def _pg_target(url: str) -> Target:
    def run(statement: str, params: tuple[Any, ...]) -> list[Any]:
        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(statement.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []

    return Target("postgresql", url, run)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        return _sqlite_target(tmp_path)
    return _pg_target(str(request.getfixturevalue("pg_url")))  # a schema of its own


@pytest.fixture
def sql_spec(tmp_path: Path) -> Iterator[Callable[..., ActionSpec]]:
    """Build a sql action as from actions.yaml; its pool is closed when the test ends."""
    built: list[ActionSpec] = []

    def build(options: dict[str, Any], **top_level: Any) -> ActionSpec:
        spec = build_spec("sql", {"retry": FAST_RETRY, **options}, tmp_path, **top_level)
        built.append(spec)
        return spec

    yield build
    for spec in built:
        spec.action.close()


def sql_action(url: str, statement: Any = UPSERT, params: dict[str, Any] | None = None,
               **options: Any) -> dict[str, Any]:
    return {"type": "sql", "url": url, "statement": statement,
            "params": PARAMS if params is None else params, "retry": FAST_RETRY,
            "timeout_seconds": 10, **options}


def routed(actions: dict[str, Any], when: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"actions": actions, "rules": [{"name": "all", "when": when or {},
                                           "do": list(actions)}]}


def attempts(store: Any, event_id: str) -> list[tuple[str, str | None, str | None]]:
    detail = store.event(event_id)
    assert detail is not None
    return [(a.outcome, a.error, a.note) for a in detail.deliveries[0].attempts]


def states(store: Any) -> list[str]:
    return [d.state for d in store.deliveries()]


# ---------------------------------------------------------------- exactly once


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_note_row_is_written_once_for_a_session_delivered_twice(
        write_config, local_relay, target: Target) -> None:  # type: ignore[no-untyped-def]
    """The recipe's upsert, keyed by the session id: the same event delivered again (a
    replay; a retry after a lost commit acknowledgement is the same case) leaves one row."""
    target.sql(TABLE)
    r = local_relay(write_config(routed({"notes": sql_action(target.url)})))
    body = unique_body("failure", error_detail="first")
    session = json.loads(body)["session_id"]
    event_id = r.accept(body)
    wait_until(lambda: states(r.store) == ["done"], message="the first delivery")
    r.store.reopen([d.id for d in r.store.deliveries()])  # `suki-relay replay`
    wait_until(lambda: len(attempts(r.store, event_id)) == 2 and states(r.store) == ["done"],
               message="the replay")
    assert [a[:2] for a in attempts(r.store, event_id)] == [("ok", None), ("ok", None)]
    assert attempts(r.store, event_id)[-1][2] == "committed; 1 row(s) affected"
    assert target.sql("SELECT session_id, status, note FROM notes") == [
        (session, "failure", "first")]


def test_a_list_of_statements_is_one_transaction(sql_spec, target: Target) -> None:  # type: ignore[no-untyped-def]
    """The last statement fails (no such table): nothing before it is kept, the table it
    created first included (SQLite's driver would run that one outside the transaction)."""
    target.sql(TABLE)
    spec = sql_spec(sql_action(target.url, [
        "CREATE TABLE audit (session_id TEXT)", UPSERT,
        "INSERT INTO audit (session_id) VALUES (:session_id)",
        "INSERT INTO later (session_id) VALUES (:session_id)"]))
    with pytest.raises(PermanentError):
        attempt_once(spec, make_delivery("failure"))
    assert target.sql("SELECT count(*) FROM notes") == [(0,)]
    with pytest.raises((sqlite3.Error, psycopg.Error)):
        target.sql("SELECT count(*) FROM audit")
    target.sql("CREATE TABLE later (session_id TEXT)")
    assert attempt_once(spec, make_delivery("failure")) == "committed; 3 row(s) affected"
    assert target.sql("SELECT count(*) FROM audit") == [(1,)]


# ---------------------------------------------------------------- the recipes, as written

RECIPES = Path(__file__).resolve().parents[1] / "docs" / "recipes" / "database.md"


def recipe(kind: str) -> tuple[str, dict[str, Any]]:
    """The table and the action of the recipe's section for ``kind``, as written."""
    heading = {"postgresql": "## PostgreSQL\n", "sqlite": "## SQLite\n"}[kind]
    section = RECIPES.read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    table = section.split("```sql\n", 1)[1].split("```", 1)[0]
    config = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    return table, config["actions"]["note-to-table"]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_recipes_write_the_note_once_per_session(write_config, local_relay, relay_log,  # type: ignore[no-untyped-def]
                                                     target: Target, suki: SukiStandIn) -> None:
    """The recipe for each database as the docs give it (only the URL is this test's):
    the note and its text land exactly, and a replay of the same event leaves one row."""
    table, action = recipe(target.kind)
    target.sql(table)
    action = {**action, "url": target.url, "retry": FAST_RETRY}
    r = local_relay(write_config({"suki": suki.settings(), **routed(
        {"note-to-table": action}, {"status": "success"})}))
    body = unique_body("success")
    event_id = r.accept(body)
    wait_until(lambda: states(r.store) == ["done"], message="the row")
    r.store.reopen([d.id for d in r.store.deliveries()])
    wait_until(lambda: len(attempts(r.store, event_id)) == 2 and states(r.store) == ["done"],
               message="the replay")
    assert [a[2] for a in attempts(r.store, event_id)] == ["committed; 1 row(s) affected"] * 2
    [(session, encounter, status, text, doc)] = target.sql(
        "SELECT session_id, encounter_id, status, note_text, note_json FROM suki_notes")
    payload = json.loads(body)
    assert (session, encounter, status) == (payload["session_id"], payload["encounter_id"],
                                            "success")
    assert text == note_text(NOTE)
    assert (doc if target.kind == "postgresql" else json.loads(doc)) == NOTE
    assert "PHI-NOTE" not in relay_log.text()


def test_the_recipes_pass_check(tmp_path: Path) -> None:
    recipes = RECIPES.read_text()
    full = yaml.safe_load(recipes.split("```yaml\n", 1)[1].split("```", 1)[0])
    for kind in ("postgresql", "sqlite"):
        _, action = recipe(kind)
        (tmp_path / "actions.yaml").write_text(yaml.safe_dump(
            {"receiver": {"secrets": [SECRET]}, **full, "actions": {"note-to-table": action}}))
        env = {"SUKI_WEBHOOK_SECRET": SECRET, "SUKI_PARTNER_ID": "p", "SUKI_PARTNER_TOKEN": "t",
               "NOTES_DB_PASSWORD": "x"}
        result = run_cli("check", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- the note, exactly


def test_the_fetched_note_and_its_text_land_exactly(sql_spec, target: Target,  # type: ignore[no-untyped-def]
                                                    suki: SukiStandIn) -> None:
    target.sql("CREATE TABLE notes (session_id TEXT PRIMARY KEY, note_text TEXT, "
               "note_json TEXT)")
    spec = sql_spec(sql_action(
        target.url,
        "INSERT INTO notes (session_id, note_text, note_json) VALUES (:session_id, :text, :doc)",
        {"session_id": "{{ event.session_id }}", "text": "{{ fetched.contents | note_text }}",
         "doc": "{{ fetched.contents | json }}"}, fetch=["contents"]), suki=suki.settings())
    attempt_once(spec, make_delivery("success"))
    [(session, text, doc)] = target.sql("SELECT session_id, note_text, note_json FROM notes")
    assert session == json.loads(sample("success"))["session_id"]
    assert text == note_text(NOTE) == ("Assessment\nPHI-NOTE-TEXT stable angina\n\n"
                                       "Plan\nPHI-NOTE-PLAN follow up in 2 weeks")
    assert json.loads(doc) == NOTE


# ---------------------------------------------------------------- outcomes


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_an_integrity_error_fails_for_good_and_names_no_value(
        write_config, local_relay, relay_log, target: Target) -> None:  # type: ignore[no-untyped-def]
    """A plain INSERT keyed by the patient: the second session of the same patient is a
    unique violation, which the database reports with the key's value (PHI)."""
    patient = "PHI-PATIENT-7731"
    target.sql("CREATE TABLE visits (patient TEXT PRIMARY KEY, session_id TEXT)")
    r = local_relay(write_config(routed({"visits": sql_action(
        target.url, "INSERT INTO visits (patient, session_id) VALUES (:patient, :session_id)",
        {"patient": "{{ event.additional_info.patient_id }}",
         "session_id": "{{ event.session_id }}"})})))
    payload = json.loads(sample("success"))
    payload["additional_info"]["patient_id"] = patient
    first = r.accept(unique_body("success", additional_info=payload["additional_info"]))
    wait_until(lambda: states(r.store) == ["done"], message="the first visit")
    second = r.accept(unique_body("success", additional_info=payload["additional_info"]))
    wait_until(lambda: sorted(states(r.store)) == ["done", "failed"], message="the refusal")
    [(outcome, error, _)] = attempts(r.store, second)  # one try: not retried
    assert outcome == "failed"
    assert error is not None and error.startswith("integrity error (fails for good): ")
    if target.kind == "postgresql":
        assert "SQLSTATE 23505 UniqueViolation (schema t_" in error
        assert error.endswith(", table visits, constraint visits_pkey)")
    else:
        assert "SQLITE_CONSTRAINT_PRIMARYKEY IntegrityError" in error
        assert "UNIQUE constraint failed: visits.patient" in error
    assert patient not in error
    assert patient not in relay_log.text()
    assert "visits" in relay_log.text() and first
    assert target.sql("SELECT count(*) FROM visits") == [(1,)]


@pytest.mark.parametrize(("statement", "postgresql", "sqlite"), [
    ("INSERT INTO missing (a) VALUES (:a)",
     'SQLSTATE 42P01 UndefinedTable: relation "missing" does not exist',
     "SQLITE_ERROR OperationalError: no such table: missing"),
    ("INSERTT INTO notes (a) VALUES (:a)",
     'SQLSTATE 42601 SyntaxError: syntax error at or near "INSERTT"',
     'SQLITE_ERROR OperationalError: near "INSERTT": syntax error'),
    ("INSERT INTO notes (session_id, status) VALUES (:a, NULL)",
     "SQLSTATE 23502 NotNullViolation (schema t_",
     "SQLITE_CONSTRAINT_NOTNULL IntegrityError: NOT NULL constraint failed: notes.status"),
])
def test_statements_the_database_refuses_fail_for_good(sql_spec, target: Target,  # type: ignore[no-untyped-def]
                                                       statement: str, postgresql: str,
                                                       sqlite: str) -> None:
    target.sql(TABLE)
    spec = sql_spec(sql_action(target.url, statement, {"a": "PHI-{{ event.session_id }}"}))
    with pytest.raises(PermanentError) as failed:
        attempt_once(spec, make_delivery("failure"))
    assert (postgresql if target.kind == "postgresql" else sqlite) in str(failed.value)
    assert "PHI-" not in str(failed.value)


def test_a_lock_held_past_the_timeout_is_retried(sql_spec, target: Target) -> None:  # type: ignore[no-untyped-def]
    """Another writer holds the lock: PostgreSQL's statement_timeout (SQLSTATE 57014)
    or SQLite's busy timeout ends the wait, and the attempt is retried."""
    target.sql(TABLE)
    spec = sql_spec(sql_action(target.url, timeout_seconds=0.5))
    if target.kind == "sqlite":
        holder: Any = sqlite3.connect(Path(spec.action.relay.base_dir) / "notes.db",
                                      isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        expected = "SQLITE_BUSY OperationalError: database is locked"
    else:
        holder = psycopg.connect(target.url)
        holder.execute("LOCK TABLE notes IN ACCESS EXCLUSIVE MODE")
        expected = ("the statement ran past timeout_seconds: SQLSTATE 57014 QueryCanceled")
    try:
        with pytest.raises(RetryableError) as late:
            in_thread(lambda: attempt_once(spec, make_delivery("failure")), wait=20)
        assert expected in str(late.value)
    finally:
        holder.rollback()
        holder.close()
    assert attempt_once(spec, make_delivery("failure")) == "committed; 1 row(s) affected"


def test_a_deadlock_is_retried(sql_spec, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """The action locks row 1 then row 2; another transaction holds row 2 and then asks
    for row 1. The action's server process finds the deadlock first (its
    deadlock_timeout, set through the URL's options, is the shorter) and is chosen."""
    target = _pg_target(pg_url)
    target.sql("CREATE TABLE pair (id int PRIMARY KEY, v text)")
    target.sql("INSERT INTO pair VALUES (1, ''), (2, '')")
    url = pg_url.replace("options=", "options=-cdeadlock_timeout%3D1s%20")
    spec = sql_spec(sql_action(url, ["UPDATE pair SET v = :s WHERE id = 1",
                                     "UPDATE pair SET v = :s WHERE id = 2"],
                               {"s": "{{ event.session_id }}"}, timeout_seconds=60))
    other = psycopg.connect(pg_url)
    try:
        other.execute("SET deadlock_timeout = '60s'")
        other.execute("UPDATE pair SET v = 'other' WHERE id = 2")
        thread, result = _attempt_in_background(spec)
        wait_until(lambda: target.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE 'UPDATE pair SET v = $1 WHERE id = 2%%'"
        )[0][0] == 1, message="the action to wait for row 2")
        other.execute("UPDATE pair SET v = 'other' WHERE id = 1")  # the cycle
        thread.join(30)
        assert not thread.is_alive()
    finally:
        other.rollback()
        other.close()
    assert isinstance(result.get("error"), RetryableError), result
    assert "deadlock: SQLSTATE 40P01 DeadlockDetected" in str(result["error"])


def _attempt_in_background(spec: Any) -> tuple[threading.Thread, dict[str, BaseException]]:
    """One attempt of a failure notification on a thread of its own; what it raised
    lands in the dict under "error"."""
    result: dict[str, BaseException] = {}

    def run() -> None:
        try:
            attempt_once(spec, make_delivery("failure"))
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_a_connection_lost_at_commit_is_retried_saying_it_may_have_committed(
        sql_spec, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """The server process is ended while it runs the COMMIT (a deferred trigger holds it
    there): the attempt is retried, and its error says the commit's outcome is unknown,
    not that the database could not be reached (it was: the statement ran)."""
    target = _pg_target(pg_url)
    target.sql(TABLE)
    target.sql("CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
               "$$ BEGIN PERFORM pg_sleep(60); RETURN NULL; END $$")
    target.sql("CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON notes DEFERRABLE "
               "INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()")
    # the COMMIT is held far longer than a loaded machine takes to see and end it (it is
    # ended as soon as it is seen): with 5 s, the COMMIT sometimes went through first
    spec = sql_spec(sql_action(pg_url, timeout_seconds=60))
    thread, result = _attempt_in_background(spec)
    committing = ("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                  "AND query = 'COMMIT' AND state = 'active'")
    wait_until(lambda: target.sql(committing) != [], message="the action's COMMIT")
    target.sql(f"SELECT pg_terminate_backend(pid) FROM ({committing}) AS c")
    thread.join(30)
    assert not thread.is_alive()
    assert isinstance(result.get("error"), RetryableError), result
    assert str(result["error"]) == ("the connection was lost at COMMIT, so whether it "
                                    "committed is unknown; it is run again: SQLSTATE 57P01 "
                                    "AdminShutdown")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_retry_after_the_database_is_stopped_and_started(
        write_config, local_relay, private_pg) -> None:  # type: ignore[no-untyped-def]
    """A connection in the pool from the first delivery; the server stops (the pool's
    connections die with it) and the next event's attempts are retried; once the server
    is back, the pool replaces its dead connections and the row is written."""
    target = _pg_target(private_pg.url)
    target.sql(TABLE)
    r = local_relay(write_config(routed({"notes": sql_action(private_pg.url,
                                                             timeout_seconds=3)})))
    r.accept(unique_body("failure"))
    wait_until(lambda: states(r.store) == ["done"], message="the first row")
    private_pg.stop()
    second = r.accept(unique_body("failure"))
    wait_until(lambda: len(attempts(r.store, second)) >= 2, timeout=30,
               message="attempts while the server is down")
    private_pg.start()
    wait_until(lambda: states(r.store) == ["done", "done"], timeout=30,
               message="the row once the server is back")
    tried = attempts(r.store, second)
    assert [a[0] for a in tried[:-1]] == ["retry"] * (len(tried) - 1) and tried[-1][0] == "ok"
    assert all(a[1] and a[1].startswith(("cannot connect to the database: ",
                                         "database error: ")) for a in tried[:-1])
    assert target.sql("SELECT count(*) FROM notes") == [(2,)]


# ---------------------------------------------------------------- check and dry runs


@pytest.mark.parametrize("syntax", ["{{ event.session_id }}", "{% if true %}x{% endif %}",
                                    "{# a comment #}"])
def test_check_refuses_template_syntax_in_a_statement(tmp_path: Path, syntax: str) -> None:
    report = check_fails(tmp_path, f"""
receiver: {{secret: s}}
actions:
  notes:
    type: sql
    url: sqlite:///notes.db
    statement: "INSERT INTO notes (session_id) VALUES ('{syntax}')"
""")
    assert f"actions.yaml:7: actions.notes.statement: template syntax {syntax[:2]!r} in SQL " \
           "text; values are never pasted into a statement" in report


def test_check_refuses_template_syntax_in_any_statement_of_a_list(tmp_path: Path) -> None:
    report = check_fails(tmp_path, """
receiver: {secret: s}
actions:
  notes:
    type: sql
    url: sqlite:///notes.db
    statement:
      - DELETE FROM notes WHERE session_id = :s
      - "INSERT INTO notes VALUES ('{{ event.session_id }}')"
    params: {s: "{{ event.session_id }}"}
""")
    assert "actions.yaml:7: actions.notes.statement: statement 2: template syntax '{{'" in report


def test_check_validates_url_and_params_and_connects_to_nothing(tmp_path: Path) -> None:
    """A listener stands where the database would be: check and routes test never
    connect to it, whatever is wrong."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        report = check_fails(tmp_path, f"""
receiver: {{secret: s}}
actions:
  a: {{type: sql, url: "postgresql://relay:pw@127.0.0.1:{port}/clinic",
      statement: "INSERT INTO t VALUES (:x, :y)", params: {{x: "{{{{ event.status }}}}", z: 1}}}}
  b: {{type: sql, url: "not a url: sec-ret@", statement: "SELECT 1"}}
  c: {{type: sql, url: "postgresq://h/db", statement: "SELECT 1"}}
  d: {{type: sql, url: "mysql+nosuchdriver://h/db", statement: "SELECT 1"}}
  e: {{type: sql, url: "sqlite://", statement: "SELECT 1"}}
  f: {{type: sql, url: "sqlite:///x.db", statement: "SELECT :v", params: {{v: [1, 2]}}}}
""")
        assert "actions.yaml:4: actions.a: statement binds :y, which params does not give" \
            in report
        # a check() message is placed at the line of the option it names
        assert "actions.yaml:5: actions.a: params: no statement binds :z" in report
        assert "actions.yaml:6: actions.b: url: not a SQLAlchemy database URL" in report
        assert "sec-ret" not in report
        assert "actions.c: url: no SQLAlchemy dialect 'postgresq' is installed" in report
        assert "actions.d: url: no SQLAlchemy dialect 'mysql+nosuchdriver'" in report
        assert "actions.e: url: an in-memory SQLite database" in report
        assert "actions.f: params.v: expected a template or a plain value, got a list" in report
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_routes_test_shows_the_statement_and_the_bound_values(tmp_path: Path) -> None:
    """The password comes from a secret file, as everywhere; it is never shown."""
    (tmp_path / "db-password").write_text("pw-SECRET\n")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        url = (f"postgresql://relay:${{file:{tmp_path}/db-password}}@127.0.0.1:"
               f"{listener.getsockname()[1]}/clinic")
        (tmp_path / "actions.yaml").write_text(yaml.safe_dump({
            "receiver": {"secrets": [SECRET]},
            "suki": {"base_url": "https://sdp.suki.ai", "partner_id": "p", "partner_token": "t"},
            **routed({"notes": sql_action(url, params={
                **PARAMS, "note": "{{ fetched.contents | note_text }}"}, fetch=["contents"])},
                {"status": "success"})}))
        assert cli_here("check", cwd=tmp_path).returncode == 0
        shown = cli_here("routes", "test", "success", "--json", cwd=tmp_path)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert shown.returncode == 0, shown.stderr
    [preview] = json.loads(shown.stdout)["actions"]
    assert preview["sends"] == {
        "url": f"postgresql+psycopg://relay:***@127.0.0.1:{url.rsplit(':', 1)[1]}",
        "statement": UPSERT,
        "params": {"session_id": json.loads(sample("success"))["session_id"],
                   "status": "success", "received_at": "1970-01-01T00:00:00.000Z",
                   "note": "Dry run\n(fetched from Suki at delivery; not in a dry run)"}}
    assert "pw-SECRET" not in shown.stdout


def test_check_renders_the_params_against_the_samples(tmp_path: Path) -> None:
    report = check_fails(tmp_path, """
receiver: {secret: s}
actions:
  notes:
    type: sql
    url: sqlite:///notes.db
    statement: INSERT INTO notes (session_id, patient) VALUES (:session_id, :patient)
    params:
      session_id: "{{ event.session_id }}"
      patient: "{{ event.additional_info.patient_ref }}"
rules:
  - {name: notes, when: {status: success}, do: [notes]}
""")
    assert "actions.yaml:8: actions.notes.params: rendering against the success sample: " \
           "UndefinedError" in report and "patient_ref" in report


def test_one_pool_per_action_sized_by_max_concurrency(sql_spec, target: Target) -> None:  # type: ignore[no-untyped-def]
    target.sql(TABLE)
    spec = sql_spec({**sql_action(target.url), "max_concurrency": 3})
    for _ in range(2):
        attempt_once(spec, make_delivery("failure"))
    pool = spec.action.engine().pool
    assert (pool.size(), pool.checkedin(), pool.overflow()) == (3, 1, -2)  # one reused


def test_build_refuses_a_bad_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="statement binds :x"):
        build_spec("sql", {"url": "sqlite:///n.db", "statement": "SELECT :x"}, tmp_path)


# ---------------------------------------------------------------- what it costs the others


@pytest.mark.parametrize(("action", "imported"), [
    ({"type": "http", "url": "https://x.example.org"}, "False"),
    ({"type": "sql", "url": "sqlite:///n.db", "statement": "SELECT 1"}, "True"),
])
def test_sqlalchemy_is_imported_only_for_a_sql_action(tmp_path: Path, action: dict[str, Any],
                                                      imported: str) -> None:
    """A worker loads every installed action type; only a configured sql action brings
    SQLAlchemy in."""
    (tmp_path / "actions.yaml").write_text(yaml.safe_dump(
        {"receiver": {"secrets": [SECRET]}, **routed({"a": action})}))
    code = ("import sys; from suki_relay.config.load import load_config; "
            "from suki_relay.serve.assemble import assemble; "
            "app = assemble(load_config('actions.yaml'), False); "
            "print('sqlalchemy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == imported


def test_a_new_sqlite_file_is_owner_only(sql_spec, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = sql_spec(sql_action("sqlite:///made.db", ["CREATE TABLE IF NOT EXISTS notes "
                                                    "(session_id TEXT PRIMARY KEY, status TEXT, "
                                                    "note TEXT, received_at TEXT)", UPSERT]))
    attempt_once(spec, make_delivery("failure"))
    assert (tmp_path / "made.db").stat().st_mode & 0o777 == 0o600


def test_the_shipped_cli_check_passes_a_sql_action(tmp_path: Path) -> None:
    (tmp_path / "actions.yaml").write_text(yaml.safe_dump(
        {"receiver": {"secrets": [SECRET]}, **routed({"notes": sql_action("sqlite:///n.db")})}))
    assert run_cli("check", cwd=tmp_path).returncode == 0
