"""SQLite: a commit that need not be durable never checkpoints without fsync.

A power loss cannot be staged in a test; the system calls can be watched. A checkpoint
copies the WAL into the database file; if the file is not fsynced before the WAL starts
over (the next writer rewrites the WAL from its header), a power loss loses commits that
were fsynced (a notification's). strace shows the order of writes and fsyncs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from suki_relay.store.sqlite import CHECKPOINT_FRAMES, SqliteDatabase

# one durable commit, then non-durable ones (delivery bookkeeping) writing well past the
# automatic checkpoint's threshold: at least three checkpoints and WAL restarts
WORKLOAD = """
import os, sys
from pathlib import Path
from suki_relay.store.sqlite import SqliteDatabase

path = Path(sys.argv[1])
db = SqliteDatabase(path, lambda: None)
with db.tx() as tx:
    tx.exec("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, b BLOB)")
    tx.exec("INSERT INTO t (b) VALUES (?)", (b"r" * 3000,))
for _ in range(int(sys.argv[2])):
    with db.tx(durable=False) as tx:
        tx.exec("INSERT INTO t (b) VALUES (?)", (os.urandom(16000),))
db.close()
"""

CALL = re.compile(r"(pwrite64|fsync|fdatasync)\(\d+<([^>]*)>(.*)$")


def make_db(path: Path) -> SqliteDatabase:
    db = SqliteDatabase(path, lambda: None)
    with db.tx() as tx:
        tx.exec("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, b BLOB)")
    return db


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (.ci/run installs it)")
def test_the_database_file_is_fsynced_before_the_wal_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    trace = tmp_path / "trace.txt"
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    commits = CHECKPOINT_FRAMES  # four pages each
    subprocess.run(
        ["strace", "-f", "-y", "-e", "trace=pwrite64,fsync,fdatasync", "-o", str(trace),
         sys.executable, str(script), str(path), str(commits)],
        check=True, timeout=300, capture_output=True)
    db_file, wal_file = str(path), f"{path}-wal"
    unsynced = 0  # pages written to the database file since its last fsync
    restarts = 0
    for line in trace.read_text().splitlines():
        match = CALL.search(line)
        if match is None:
            continue
        call, file, rest = match.groups()
        if file == db_file:
            if call == "pwrite64":
                unsynced += 1
            else:
                unsynced = 0
        elif file == wal_file and call == "pwrite64":
            assert unsynced == 0, (
                f"{unsynced} pages checkpointed into the database file without fsync, "
                "then the WAL written over")
            if rest.rstrip().endswith(", 32, 0) = 32"):  # a WAL header: the WAL starts over
                restarts += 1
    assert restarts >= 3  # the workload did checkpoint and restart the WAL


def test_a_long_stretch_of_non_durable_commits_keeps_the_wal_bounded(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    db = make_db(path)
    try:
        for _ in range(CHECKPOINT_FRAMES):  # each commit writes four pages or five
            with db.tx(durable=False) as tx:
                tx.exec("INSERT INTO t (b) VALUES (?)", (os.urandom(16000),))
        page = 4096 + 24  # a WAL frame: its header and a page
        assert os.stat(f"{path}-wal").st_size <= 32 + (CHECKPOINT_FRAMES + 50) * page
        with db.tx(write=False) as tx:
            assert tx.exec("SELECT count(*) FROM t").fetchone()[0] == CHECKPOINT_FRAMES
    finally:
        db.close()


def test_durable_commits_still_checkpoint_by_themselves(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    db = make_db(path)
    try:
        with db.tx(durable=False) as tx:
            tx.exec("INSERT INTO t (b) VALUES (?)", (b"x",))
        for _ in range(CHECKPOINT_FRAMES // 5):  # ten pages or so each
            with db.tx() as tx:
                tx.exec("INSERT INTO t (b) VALUES (?)", (os.urandom(40000),))
        page = 4096 + 24
        assert os.stat(f"{path}-wal").st_size <= 32 + (CHECKPOINT_FRAMES + 50) * page
    finally:
        db.close()
