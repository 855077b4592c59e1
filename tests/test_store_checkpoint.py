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


# a process with the store open makes non-durable commits (delivery bookkeeping); then
# another process opens the same file and writes; then the first writes again. If the
# first had dropped its locks on the -shm file (by opening and closing a descriptor of it
# itself: POSIX locks are per process and file), the second would take itself for the only
# user, reset the -shm under the first's mapping, and the first would die of SIGBUS
HOLDER = """
import subprocess, sys
from pathlib import Path
from suki_relay.store.sqlite import SqliteDatabase

path = Path(sys.argv[1])
db = SqliteDatabase(path, lambda: None)
with db.tx() as tx:
    tx.exec("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, b BLOB)")
for _ in range(3):
    with db.tx(durable=False) as tx:
        tx.exec("INSERT INTO t (b) VALUES (?)", (b"x" * 100,))
subprocess.run([sys.executable, "-c", sys.argv[2], str(path)], check=True, timeout=30)
for _ in range(3):
    with db.tx(durable=False) as tx:
        tx.exec("INSERT INTO t (b) VALUES (?)", (b"y" * 100,))
with db.tx(write=False) as tx:
    print(tx.exec("SELECT count(*) FROM t").fetchone()[0])
db.close()
"""

# SQLite's "dead man switch" on the -shm file: every process using the WAL holds a shared
# lock on byte 128 (WALINDEX_LOCK_OFFSET 120 + 8 locks, wal.c); a process that can lock it
# exclusively takes itself for the only user and resets the -shm
OTHER = """
import fcntl, os, sys
fd = os.open(sys.argv[1] + "-shm", os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
except OSError:
    pass  # held by the writer, as it must be
else:
    sys.exit("the writer holds no lock on the -shm: another process would reset it")
finally:
    os.close(fd)
from pathlib import Path
from suki_relay.store.sqlite import SqliteDatabase
db = SqliteDatabase(Path(sys.argv[1]), lambda: None)
with db.tx() as tx:
    tx.exec("INSERT INTO t (b) VALUES (?)", (b"z" * 100,))
db.close()
"""


def test_another_process_opening_the_store_does_not_reset_it_under_a_writer(
        tmp_path: Path) -> None:
    """Every commit of both processes is there, and neither dies."""
    done = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path / "relay.db"), OTHER],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-300:]
    assert done.stdout.strip() == "7"
