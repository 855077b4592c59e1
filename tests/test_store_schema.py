"""The schema as numbered migrations: fresh databases, upgrades in place, newer refused."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from suki_relay.cli.main import main
from suki_relay.store import EventFilter, NewEvent, SchemaTooNew, open_store, schema
from suki_relay.store.schema import Migration

from .conftest import open_test_store


def versions(store) -> list[int]:  # type: ignore[no-untyped-def]
    with store.tx(write=False) as tx:
        return [r["version"] for r in tx.all("SELECT version FROM relay_schema ORDER BY version")]


def test_migrations_are_numbered_one_by_one() -> None:
    assert [m.version for m in schema.MIGRATIONS] == list(range(1, len(schema.MIGRATIONS) + 1))


def test_a_fresh_store_gets_every_migration(tmp_path: Path, store_url: str) -> None:
    store = open_test_store(store_url, tmp_path)
    assert versions(store) == [m.version for m in schema.MIGRATIONS]
    assert store.stats().events == 0


def test_an_older_database_is_upgraded_in_place(tmp_path: Path, store_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    old = open_store(store_url, tmp_path)
    old.record([NewEvent("k1", b"{}", 1, "success", "s", None, False, ["r"], ["a"])])
    old.close()
    step = Migration(schema.latest() + 1, "a column for a test",
                     "ALTER TABLE events ADD COLUMN test_note TEXT; "
                     "UPDATE events SET test_note = 'upgraded'")
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, step])

    store = open_test_store(store_url, tmp_path)
    assert versions(store)[-1] == step.version
    with store.tx(write=False) as tx:
        assert tx.all("SELECT test_note FROM events") == [{"test_note": "upgraded"}]
    (event,) = store.events(EventFilter())  # reads name their columns: still the same rows
    assert event.status == "success" and event.deliveries == {"pending": 1}


def test_a_newer_schema_is_refused_with_a_clear_error(tmp_path: Path, store_url: str) -> None:
    store = open_test_store(store_url, tmp_path)
    with store.tx() as tx:
        tx.exec("INSERT INTO relay_schema (version) VALUES (?)", (schema.latest() + 1,))
    with pytest.raises(SchemaTooNew, match="newer than this suki-relay's"):
        open_store(store_url, tmp_path)


def test_the_cli_prints_a_newer_schema_as_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "actions.yaml").write_text("receiver: {secrets: [s]}\nstore: sqlite:///relay.db\n")
    store = open_test_store("sqlite:///relay.db", tmp_path)
    with store.tx() as tx:
        tx.exec("INSERT INTO relay_schema (version) VALUES (?)", (schema.latest() + 5,))
    monkeypatch.chdir(tmp_path)
    assert main(["events"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "upgrade suki-relay" in err and "Traceback" not in err


def test_nodes_starting_together_create_the_schema_once(tmp_path: Path, store_url: str) -> None:
    opened, errors = [], []

    def start() -> None:
        try:
            opened.append(open_store(store_url, tmp_path))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == [] and len(opened) == 4
        assert versions(opened[0]) == [m.version for m in schema.MIGRATIONS]
    finally:
        for store in opened:
            store.close()


def _open_files(path: Path) -> int:
    fds = Path("/proc/self/fd")
    names = []
    for fd in fds.iterdir():
        try:
            names.append(os.readlink(fd))
        except OSError:
            continue
    return sum(name.startswith(str(path)) for name in names)


def test_close_closes_the_connections_of_every_thread(tmp_path: Path) -> None:
    store = open_store("sqlite:///relay.db", tmp_path)

    def read() -> None:
        store.stats()

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert _open_files(tmp_path / "relay.db") >= 4
    store.close()
    assert _open_files(tmp_path / "relay.db") == 0
    assert store.stats().events == 0  # a closed store opens a fresh connection when used again
    store.close()
