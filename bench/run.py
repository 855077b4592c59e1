"""suki-relay benchmarks: every figure is a ratio against a baseline measured in the same run.

    python bench/run.py                 # everything (about 10 minutes on 2 cores)
    python bench/run.py --only ack      # one part: ack, stall, delivery, fetch, hl7, routing, memory
    python bench/run.py --only breakdown   # where acknowledgement time goes (not in the default run)
    python bench/run.py --only flood       # good requests beside a flood of bad ones (not default)
    python bench/run.py --only footprint   # worker RSS, idle and under load, all off vs all on
    python bench/run.py --only scaling --pg URL   # 1, 2, 4 workers; two relays on one database
    python bench/run.py --rounds 3 --duration 3
    python bench/run.py --only ack --compare ../release   # another checkout, same rounds
    python bench/run.py --only ack --pg URL --handlers "spool disabled" "PostgreSQL ("

Needs wrk (Debian: apt-get install wrk) and Flask (pip install -e '.[bench]').
Load goes to 127.0.0.1 only; every server started here is stopped here, by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import json
import os
import pstats
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from suki_relay import protocol  # noqa: E402
from suki_relay.testing import free_port, wait_until  # noqa: E402
from tests.support.relay import PrivateDatabase, pg_schema  # noqa: E402

SECRET = "bench-secret"
PY = sys.executable
SERVE_DEFAULTS = ["-k", "gthread", "-w", "2", "--threads", "16"]  # as `suki-relay serve`
SAMPLE = json.loads((REPO / "suki_relay" / "samples" / "failure.json").read_text())
ENV = {**os.environ, "SUKI_WEBHOOK_SECRET": SECRET}


# ---------------------------------------------------------------- processes


@contextmanager
def server(cmd: list[str], port: int, env: dict[str, str] | None = None,
           cwd: Path = REPO) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=cwd, env=env or ENV, stdout=log, stderr=log,
                            start_new_session=True)
    try:
        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited: see {log.name}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 30, 0.1, "the server")
        time.sleep(1.0)  # workers booted
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


def gunicorn(app: str, port: int, extra: list[str] | None = None) -> list[str]:
    return [PY, "-m", "gunicorn", *SERVE_DEFAULTS, *(extra or []), "--bind",
            f"127.0.0.1:{port}", "--no-control-socket", "--log-level", "warning", app]


def relay_config(folder: Path, actions: dict[str, Any] | None = None,
                 store: str = "sqlite:///relay.db", **top_level: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "actions.yaml"
    config: dict[str, Any] = {"receiver": {"secrets": [SECRET]}, "store": store,
                              "metrics": {"enabled": True}, **top_level}
    config["actions"] = actions or {}
    config["rules"] = [{"name": "all", "do": list(actions or {})}]
    cfg.write_text(yaml.safe_dump(config))
    return cfg


def relay_cmd(cfg: Path, port: int, python: str = PY, workers: int | None = None) -> list[str]:
    return [python, "-m", "suki_relay.cli", "-c", str(cfg), "serve", "--bind",
            f"127.0.0.1:{port}", *(["--workers", str(workers)] if workers else [])]


def checkout_python(tree: Path) -> str:
    """The Python that runs another checkout of suki-relay (``--compare``): its own
    ``.venv`` when it has one, else this one (run from that folder, so that ``-m``
    imports that checkout's code)."""
    venv = tree / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else PY


def checkout_label(tree: Path) -> str:
    commit = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %cs"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return commit or str(tree)


def relay_env(folder: Path) -> dict[str, str]:
    prom = folder / "prom"
    prom.mkdir(exist_ok=True)
    return {**ENV, "PROMETHEUS_MULTIPROC_DIR": str(prom), "SUKI_RELAY_LOG_FORMAT": "json"}


# ---------------------------------------------------------------- load


def signed_lines(count: int, path: Path, secret: str = SECRET) -> Path:
    """Distinct signed requests, one per line: generated-at, signature, body."""
    now = str(int(time.time() * 1000))
    with path.open("w") as f:
        for i in range(count):
            body = json.dumps({**SAMPLE, "session_id": f"bench-{os.getpid()}-{now}-{i}"})
            f.write(f"{now}\t{protocol.signature(secret, now, body.encode())}\t{body}\n")
    return path


def wrk(port: int, lines: Path, duration: float, connections: int,
        threads: int = 2) -> dict[str, float]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, int(duration))}s", "--latency",
           "-s", str(REPO / "bench" / "requests.lua"),
           f"http://127.0.0.1:{port}/webhooks/notification", "--", str(lines), str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 600).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "requests": total, "non2xx": int(bad.group(1)) if bad else 0,
            "p50_ms": int(re.search(r"p50_us (\d+)", out).group(1)) / 1000,  # type: ignore[union-attr]
            "p99_ms": int(re.search(r"p99_us (\d+)", out).group(1)) / 1000,  # type: ignore[union-attr]
            "socket_errors": errors.group(1) if errors else ""}


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def paired_ratio(values: list[float], baselines: list[float]) -> float:
    """The median of each round's ratio to the baseline measured in the same round: the
    machine's speed drifts between rounds, and a round's pair shares its conditions."""
    return statistics.median(v / b for v, b in zip(values, baselines, strict=True))


def balanced_orders(n: int) -> list[list[int]]:
    """Orders to run ``n`` handlers in, one per round, cycling: over a cycle each handler
    runs in every position and right after every other handler equally often (a Williams
    design). A run is slowed by the one before it (the disk and the database still busy
    with its writes), so no handler may always follow the same one."""
    first = [0] + [(k + 1) // 2 if k % 2 else n - k // 2 for k in range(1, n)]
    square = [[(x + r) % n for x in first] for r in range(n)]
    return square if n % 2 == 0 else square + [row[::-1] for row in square]


def stored_events(folder: Path, url: str = "sqlite:///relay.db") -> int:
    """Events committed by the relay that ran in ``folder``: in its store, and in its
    spool (events received while the database was down, not moved yet)."""
    from suki_relay.store import open_store
    from suki_relay.store.spool import Spool

    store = open_store(url, folder)
    try:
        events = store.stats().events
    finally:
        store.close()
    spool_file = folder / "suki-relay-spool.db"
    if spool_file.exists():
        spool = Spool(spool_file, 1)
        try:
            events += spool.summary()["spooled"]
        finally:
            spool.close()
    return events


OUTAGES: dict[str, PrivateDatabase] = {}  # store URL -> its database, to take down


@contextmanager
def run_store(spec: str) -> Iterator[str]:
    """The store URL for one run, cleaned up afterwards: a PostgreSQL URL gets a fresh
    schema there; ``outage:URL``, a database of its own on that server, which the run
    takes down once the relay is up (OUTAGES) and drops afterwards; ``pgdb:URL``, a
    database of its own on that server, dropped afterwards (``pgdb-nosync:URL``, its
    commits not waiting for the disk: a measurement, never shipped); ``tmpfs``, SQLite in
    a fresh folder under /dev/shm; anything else (a SQLite URL, or "" for a handler
    without a store) is used as it is."""
    if spec.startswith("postgres"):
        with pg_schema(spec, "bench") as url:
            yield url
    elif spec.startswith("outage:"):  # a private database on that server, to take down
        with PrivateDatabase(spec.removeprefix("outage:"), "suki_bench_outage") as db:
            OUTAGES[db.url] = db
            try:
                yield db.url
            finally:
                db.up()
                del OUTAGES[db.url]
    elif spec.startswith(("pgdb:", "pgdb-nosync:")):  # a database of its own on that server
        kind, _, server_url = spec.partition(":")
        with PrivateDatabase(server_url, "suki_bench") as db:
            if kind == "pgdb-nosync":
                yield (f"{db.url}{'&' if '?' in db.url else '?'}"
                       "options=-csynchronous_commit%3Doff")
            else:
                yield db.url
    elif spec == "tmpfs":
        ram = Path(tempfile.mkdtemp(prefix="suki-relay-bench-", dir="/dev/shm"))
        try:
            yield f"sqlite:///{ram}/relay.db"
        finally:
            shutil.rmtree(ram, ignore_errors=True)
    else:
        yield spec


# ---------------------------------------------------------------- targets


class StallTarget:
    """An HTTP target that answers every request after ``delay`` seconds."""

    def __init__(self, delay: float):
        outer = self
        self.count = 0

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.count += 1
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- 1, 2: acknowledgement


def bench_ack(args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """Relay (SQLite, committed before 2xx) against bare WSGI and Suki's Flask handler."""
    sqlite = "sqlite:///relay.db"
    Make = Callable[[Path, int, str], tuple[list[str], dict[str, str], Path]]
    handlers: dict[str, tuple[str, Make]] = {
        "bare WSGI (read body, 200)":
            ("", lambda d, p, u: (gunicorn("bench.apps:bare", p), ENV, REPO)),
        "Suki's Flask handler (verify, parse, branch)":
            ("", lambda d, p, u: (gunicorn("bench.apps:flask_app()", p), ENV, REPO)),
        "suki-relay (verify, route, commit, 200)": (sqlite, lambda d, p, u: (
            relay_cmd(relay_config(d, store=u), p), relay_env(d), REPO)),
    }
    if args.compare:  # another checkout's relay, measured in the same rounds
        tree = args.compare.resolve()
        handlers[f"suki-relay at {checkout_label(tree)} (verify, route, commit, 200)"] = (
            sqlite, lambda d, p, u: (relay_cmd(relay_config(d, store=u), p,
                                               checkout_python(tree)), relay_env(d), tree))
    if args.pg:
        relay = handlers["suki-relay (verify, route, commit, 200)"][1]
        handlers["suki-relay on PostgreSQL (verify, route, commit, 200)"] = (args.pg, relay)
        handlers["suki-relay on PostgreSQL, spool disabled"] = (args.pg, lambda d, p, u: (
            relay_cmd(relay_config(d, store=u, spool={"enabled": False}), p), relay_env(d),
            REPO))
        handlers["suki-relay on PostgreSQL, database down (spooled, 200)"] = \
            (f"outage:{args.pg}", relay)
    if args.pg and args.compare:  # the other checkout on PostgreSQL too, up and down
        tree = args.compare.resolve()
        other = handlers[f"suki-relay at {checkout_label(tree)} (verify, route, commit, 200)"][1]
        handlers[f"suki-relay at {checkout_label(tree)} on PostgreSQL (verify, route, commit, "
                 "200)"] = (args.pg, other)
        handlers[f"suki-relay at {checkout_label(tree)} on PostgreSQL, database down "
                 "(spooled, 200)"] = (f"outage:{args.pg}", other)
    if args.handlers:  # only these (bare WSGI always: every ratio is to it)
        handlers = {k: v for k, v in handlers.items() if k.startswith("bare WSGI")
                    or any(part in k for part in args.handlers)}
    saturated: dict[str, list[dict[str, float]]] = {k: [] for k in handlers}
    single: dict[str, list[dict[str, float]]] = {k: [] for k in handlers}
    names = list(handlers)
    orders = balanced_orders(len(names))
    for rnd in range(args.rounds):
        for name in [names[i] for i in orders[rnd % len(orders)]]:
            store, make = handlers[name]
            folder = work / f"ack-{rnd}-{len(saturated[name])}-{abs(hash(name))}"
            folder.mkdir(parents=True)
            port = free_port()
            os.sync()  # the last run's writes reach the disk before this run starts
            time.sleep(1.0)
            with run_store(store) as url:
                cmd, env, cwd = make(folder, port, url)
                with server(cmd, port, env, cwd):
                    if url in OUTAGES:
                        OUTAGES[url].down()
                    lines = signed_lines(int(args.duration * 15000), folder / "load.txt")
                    result = wrk(port, lines, args.duration, args.connections)
                    saturated[name].append(result)
                    lines1 = signed_lines(int(args.duration * 3000), folder / "load1.txt")
                    single[name].append(wrk(port, lines1, args.duration / 2, 1, threads=1))
                if url:
                    if url in OUTAGES:  # the relay is stopped: nothing moves while counting
                        OUTAGES[url].up()
                    accepted = result["requests"] - result["non2xx"]
                    committed = stored_events(folder, url)
                    assert committed >= accepted, f"{accepted} acknowledged, {committed} stored"
                    result["committed"] = committed
            print(f"  round {rnd + 1} {name}: {result['rps']:.0f} req/s", file=sys.stderr)
    bare = saturated["bare WSGI (read body, 200)"]
    rows = []
    for name in handlers:
        rows.append({"handler": name, "req_s": median(saturated[name], "rps"),
                     "ratio": paired_ratio([r["rps"] for r in saturated[name]],
                                           [r["rps"] for r in bare]),
                     "p50_ms": median(saturated[name], "p50_ms"),
                     "p99_ms": median(saturated[name], "p99_ms"),
                     "one_conn_p50_ms": median(single[name], "p50_ms"),
                     "one_conn_p99_ms": median(single[name], "p99_ms"),
                     "non2xx": sum(r["non2xx"] for r in saturated[name]),
                     "req_s_by_round": [r["rps"] for r in saturated[name]]})
        if args.compare and name == "suki-relay (verify, route, commit, 200)":
            before = next(v for k, v in saturated.items() if k.startswith("suki-relay at "))
            rows[-1]["to_compared"] = paired_ratio([r["rps"] for r in saturated[name]],
                                                   [r["rps"] for r in before])
    out["ack"] = rows


def bench_stall(args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """Acknowledgement with every event routed to a target that stalls 5 s, vs no actions."""
    target = StallTarget(5.0)
    configs = {
        "no actions": None,
        "every event to a 5 s stalled http target": {
            "stalled": {"type": "http", "url": target.url, "timeout_seconds": 10}},
    }
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in configs}
    try:
        for rnd in range(args.rounds):
            for name, actions in configs.items():
                folder = work / f"stall-{rnd}-{len(runs[name])}-{len(name)}"
                port = free_port()
                cfg = relay_config(folder, actions)
                with server(relay_cmd(cfg, port), port, relay_env(folder)):
                    lines = signed_lines(int(args.duration * 15000), folder / "load.txt")
                    runs[name].append(wrk(port, lines, args.duration, args.connections))
                print(f"  round {rnd + 1} {name}: p99 {runs[name][-1]['p99_ms']:.1f} ms",
                      file=sys.stderr)
    finally:
        target.stop()
    base = [r["p99_ms"] for r in runs["no actions"]]
    out["stall"] = [{"config": name, "req_s": median(r, "rps"), "p50_ms": median(r, "p50_ms"),
                     "p99_ms": median(r, "p99_ms"),
                     "p99_ratio": paired_ratio([x["p99_ms"] for x in r], base),
                     "p99_ms_by_round": [x["p99_ms"] for x in r]}
                    for name, r in runs.items()]


def bench_breakdown(args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """Where acknowledgement throughput goes: the relay with recording taken out step by
    step (bench/apps.py:relay_without), each against bare WSGI in the same round; and for
    every step, the CPU a request costs the relay's processes and (on PostgreSQL) the
    database server's processes serving it, the transactions it commits, and the group
    commit's batches (events per batch, milliseconds per batch in the store)."""
    steps: dict[str, tuple[str, str]] = {
        "bare WSGI (read body, 200)": ("bench.apps:bare", ""),
        "relay, nothing stored (verify, parse, route, log, count)":
            ("bench.apps:relay_without('store')", "sqlite:///relay.db"),
        "+ group commit and the writer lock around an empty batch":
            ("bench.apps:relay_without('sqlite')", "sqlite:///relay.db"),
        "+ SQLite on tmpfs (commits, no disk)": ("bench.apps:relay_without('nothing')", "tmpfs"),
        "+ the disk: the relay as it ships": ("bench.apps:relay_without('nothing')",
                                               "sqlite:///relay.db"),
    }
    if not Path("/dev/shm").is_dir():
        del steps["+ SQLite on tmpfs (commits, no disk)"]
    if args.pg:  # the same steps' end on PostgreSQL (a database of its own per run, so its
        # server processes and transactions are the relay's alone): its commit without and
        # with the disk
        steps["PostgreSQL, commits not waiting for the disk (synchronous_commit off; "
              "a measurement, never shipped)"] = ("bench.apps:relay_without('nothing')",
                                                  f"pgdb-nosync:{args.pg}")
        steps["PostgreSQL as it ships"] = ("bench.apps:relay_without('nothing')",
                                           f"pgdb:{args.pg}")
        if args.compare:
            steps[f"PostgreSQL as it ships, at {checkout_label(args.compare.resolve())}"] = (
                "compare", f"pgdb:{args.pg}")
    if args.handlers:  # only these steps (bare WSGI always: every ratio is to it)
        steps = {k: v for k, v in steps.items() if k.startswith("bare WSGI")
                 or any(part in k for part in args.handlers)}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in steps}
    names = list(steps)
    orders = balanced_orders(len(names))
    for rnd in range(args.rounds):
        for name in [names[i] for i in orders[rnd % len(orders)]]:
            app, store = steps[name]
            folder = work / f"breakdown-{rnd}-{len(runs[name])}-{abs(hash(name))}"
            port = free_port()
            os.sync()  # the last run's writes reach the disk before this run starts
            time.sleep(1.0)
            with run_store(store) as url:
                env = ENV
                if url:
                    cfg = relay_config(folder, store=url)
                    env = {**relay_env(folder), "SUKI_RELAY_CONFIG": str(cfg),
                           "SUKI_BENCH_COUNTS": str(folder)}
                else:
                    folder.mkdir(parents=True)
                cmd, cwd = gunicorn(app, port), REPO
                if app == "compare":  # the other checkout's relay, as it ships
                    cwd = args.compare.resolve()
                    cmd = relay_cmd(cfg, port, checkout_python(cwd))
                pg = url if url.startswith("postgres") else None
                with server(cmd, port, env, cwd) as proc:
                    lines = signed_lines(int(args.duration * 15000), folder / "load.txt")
                    before = Usage.now(proc.pid, pg, folder)
                    result = wrk(port, lines, args.duration, args.connections)
                    result.update(before.since(proc.pid, pg, folder, int(result["requests"])))
            runs[name].append(result)
            print(f"  round {rnd + 1} {name}: {result['rps']:.0f} req/s, relay "
                  f"{result['relay_cpu_ms']:.2f} ms CPU/req, database "
                  f"{result.get('db_cpu_ms', 0):.2f} ms CPU/req, "
                  f"{result.get('events_per_batch', 0):.1f} events/batch", file=sys.stderr)
    bare = [r["rps"] for r in runs["bare WSGI (read body, 200)"]]
    out["breakdown"] = [{"step": name, "req_s": median(r, "rps"),
                         "ratio": paired_ratio([x["rps"] for x in r], bare),
                         **{k: statistics.median(x[k] for x in r) for k in r[0]
                            if k not in ("rps", "socket_errors", "requests")},
                         "req_s_by_round": [x["rps"] for x in r]}
                        for name, r in runs.items()]


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User and system CPU seconds of a process (and of its descendants alive now)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        each = todo.pop()
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            if children:
                for task in Path(f"/proc/{each}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


@dataclasses.dataclass
class Usage:
    """What a relay run used so far: its processes' CPU, its database server processes'
    CPU and transactions (a database of its own), its group commits (bench/apps.py)."""

    relay_cpu: float
    machine: tuple[int, int]  # /proc/stat: all CPU time, idle time (ticks, every core)
    db_cpu: dict[int, float]
    db_xacts: int
    batches: dict[str, float]
    at: float

    @classmethod
    def now(cls, pid: int, pg: str | None, folder: Path) -> Usage:
        at = time.monotonic()
        relay = cpu_seconds(pid)
        ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        machine = (sum(ticks[:8]), ticks[3] + ticks[4])
        db_cpu, xacts = {}, 0
        if pg:
            import psycopg

            name = urlsplit(pg).path.lstrip("/")
            with psycopg.connect(pg.split("?")[0], autocommit=True) as conn:
                pids = [r[0] for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid()", (name,))]
                row = conn.execute("SELECT xact_commit FROM pg_stat_database "
                                   "WHERE datname = %s", (name,)).fetchone()
                xacts = row[0] if row else 0
            db_cpu = {p: cpu_seconds(p, children=False) for p in pids}
        batches = {"batches": 0.0, "events": 0.0, "seconds": 0.0}
        for f in folder.glob("batches-*.json"):
            with contextlib.suppress(OSError, ValueError):
                for k, v in json.loads(f.read_text()).items():
                    batches[k] += v
        return cls(relay, machine, db_cpu, xacts, batches, at)

    def since(self, pid: int, pg: str | None, folder: Path, requests: int) -> dict[str, float]:
        """Per request since this: CPU milliseconds of the relay and of the database,
        transactions; per batch: events and store milliseconds. Waits for the database's
        statistics and the tallies to be written (a second or so)."""
        end = Usage.now(pid, pg, folder)
        time.sleep(1.5)  # PostgreSQL reports a backend's transactions at most once a second
        late = Usage.now(pid, pg, folder)
        n = max(1, requests)
        got: dict[str, float] = {"relay_cpu_ms": (end.relay_cpu - self.relay_cpu) / n * 1000,
                                 "relay_cores": (end.relay_cpu - self.relay_cpu)
                                 / (end.at - self.at),
                                 "machine_busy": 1 - (end.machine[1] - self.machine[1])
                                 / max(1, end.machine[0] - self.machine[0])}
        if pg:
            db = sum(c - self.db_cpu.get(p, 0.0) for p, c in end.db_cpu.items())
            got.update(db_cpu_ms=db / n * 1000, db_cores=db / (end.at - self.at),
                       db_xacts_per_req=(late.db_xacts - self.db_xacts) / n,
                       db_connections=len(end.db_cpu))
        batches = late.batches["batches"] - self.batches["batches"]
        if batches:
            got.update(events_per_batch=(late.batches["events"] - self.batches["events"])
                       / batches,
                       store_ms_per_batch=(late.batches["seconds"] - self.batches["seconds"])
                       / batches * 1000)
        return got


def bench_flood(args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """Good requests (one connection) alone, then beside a flood of wrongly signed ones
    (``--connections``), for the relay as shipped and for the relay without its record of
    refused requests: what the record costs the refusals and the good requests beside them,
    and how many rows it kept."""
    from suki_relay.store import open_store

    variants = {"relay as shipped": "bench.apps:relay_without('nothing')",
                "relay without the refusal record": "bench.apps:relay_without('rejections')"}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for rnd in range(args.rounds):
        for name, app in variants.items():
            folder = work / f"flood-{rnd}-{len(runs[name])}-{abs(hash(name))}"
            port = free_port()
            cfg = relay_config(folder)
            env = {**relay_env(folder), "SUKI_RELAY_CONFIG": str(cfg)}
            with server(gunicorn(app, port), port, env):
                good = signed_lines(int(args.duration * 3000), folder / "good.txt")
                alone = wrk(port, good, args.duration, 1, threads=1)
                bad = signed_lines(int(args.duration * 15000), folder / "bad.txt", "wrong")
                flood: dict[str, Any] = {}
                flooding = threading.Thread(target=lambda f=flood, p=port, b=bad: f.update(
                    wrk(p, b, args.duration + 1, args.connections)))
                flooding.start()
                time.sleep(0.5)
                good2 = signed_lines(int(args.duration * 3000), folder / "good2.txt")
                beside = wrk(port, good2, args.duration, 1, threads=1)
                flooding.join()
                time.sleep(1.5)  # the last second's tally is written
            store = open_store("sqlite:///relay.db", folder)
            try:
                kept = store.rejections(limit=100_000)
            finally:
                store.close()
            runs[name].append({"good_p50_ms": alone["p50_ms"], "good_p99_ms": alone["p99_ms"],
                               "flooded_good_p50_ms": beside["p50_ms"],
                               "flooded_good_p99_ms": beside["p99_ms"],
                               "flooded_good_non2xx": beside["non2xx"],
                               "refusals_per_s": flood["rps"], "refusals": flood["requests"],
                               "rows_kept": len(kept),
                               "refusals_counted": sum(r.count for r in kept)})
            print(f"  round {rnd + 1} {name}: good p99 {alone['p99_ms']:.1f} ms alone, "
                  f"{beside['p99_ms']:.1f} ms beside {flood['rps']:.0f} refusals/s; "
                  f"{len(kept)} rows kept", file=sys.stderr)
    shipped = runs["relay as shipped"]
    without = runs["relay without the refusal record"]
    out["flood"] = {
        "rows": [{"variant": name, **{k: statistics.median(r[k] for r in rs) for k in rs[0]}}
                 for name, rs in runs.items()],
        "refusals_ratio": paired_ratio([r["refusals_per_s"] for r in shipped],
                                       [r["refusals_per_s"] for r in without]),
        "flooded_good_p99_ratio": paired_ratio([r["flooded_good_p99_ms"] for r in shipped],
                                               [r["flooded_good_p99_ms"] for r in without]),
        "by_round": runs,
    }


# ---------------------------------------------------------------- 3: delivery


def bench_delivery(args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """Store -> fast local target, against a bare `requests` loop of the same concurrency.
    Each is a new process, timed from its start to its last delivery done (a worker's
    start-up: imports, config, store; the loop's: the interpreter and requests), and
    ``from_first`` gives each one's rate from its first delivery done to its last."""
    n, concurrency = args.deliveries, 8
    port = free_port()
    body = json.dumps(SAMPLE).encode()
    body_file = work / "delivery-body.json"
    body_file.write_bytes(body)
    relays = [("suki-relay worker", PY, REPO)]
    if args.compare:  # another checkout's worker, in the same rounds (before and after)
        tree = args.compare.resolve()
        relays.append((f"suki-relay worker at {checkout_label(tree)}", checkout_python(tree), tree))
    results: dict[str, list[float]] = {"requests loop": [], **{name: [] for name, _, _ in relays}}
    from_first: dict[str, list[float]] = {name: [] for name in results}
    start_up: dict[str, list[float]] = {name: [] for name in results}
    cpu: dict[str, list[float]] = {name: [] for name in results}  # seconds, whole run
    loops_around: dict[str, list[float]] = {name: [] for name, _, _ in relays}
    loops_from_first: dict[str, list[float]] = {name: [] for name, _, _ in relays}
    loops_cpu: dict[str, list[float]] = {name: [] for name, _, _ in relays}
    with server(gunicorn("bench.apps:bare", port), port):
        url = f"http://127.0.0.1:{port}/"

        def loop() -> tuple[float, float, float, float]:
            whole, first, steady, used = loop_delivery(url, body_file, n, concurrency)
            results["requests loop"].append(whole)
            start_up["requests loop"].append(first)
            from_first["requests loop"].append(steady)
            cpu["requests loop"].append(used)
            return whole, first, steady, used

        for rnd in range(args.rounds):
            # the loop runs before and after each relay: a relay's baseline is the mean of
            # the two around it (on a shared machine the load drifts within a round)
            before = loop()
            for i, (name, python, tree) in enumerate(relays if rnd % 2 == 0 else relays[::-1]):
                whole, first, steady, used = relay_delivery(
                    work / f"delivery-{rnd}-{i}", url, body_file, n, concurrency, python, tree)
                after = loop()
                results[name].append(whole)
                start_up[name].append(first)
                from_first[name].append(steady)
                cpu[name].append(used)
                loops_around[name].append((before[0] + after[0]) / 2)
                loops_from_first[name].append((before[2] + after[2]) / 2)
                loops_cpu[name].append((before[3] + after[3]) / 2)
                before = after
            print(f"  round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in results.items())
                  + "; from the first delivery: " + ", ".join(
                      f"{k} {v[-1]:.0f}/s" for k, v in from_first.items()), file=sys.stderr)
    loop_rates = results["requests loop"]
    rows: list[dict[str, Any]] = [{
        "path": "requests loop", "events_s": statistics.median(loop_rates), "ratio": 1.0,
        "rounds": loop_rates, "start_to_first_delivery_s": statistics.median(
            start_up["requests loop"]),
        "from_first_events_s": statistics.median(from_first["requests loop"]),
        "cpu_us_per_delivery": statistics.median(cpu["requests loop"]) / n * 1e6}]
    for name, _, _ in relays:
        rows.append({"path": name, "events_s": statistics.median(results[name]),
                     "ratio": paired_ratio(results[name], loops_around[name]),
                     "rounds": results[name],
                     "ratio_rounds": [round(v / b, 3) for v, b in
                                      zip(results[name], loops_around[name], strict=True)],
                     "start_to_first_delivery_s": statistics.median(start_up[name]),
                     "from_first_events_s": statistics.median(from_first[name]),
                     "from_first_ratio": paired_ratio(from_first[name], loops_from_first[name]),
                     # CPU for the whole run (start-up included), per delivery, and over
                     # the loops' around it: a figure the machine's load moves far less
                     "cpu_us_per_delivery": statistics.median(cpu[name]) / n * 1e6,
                     "cpu_to_loop": paired_ratio(cpu[name], loops_cpu[name])})
    if args.compare:
        rows[1]["to_compared"] = paired_ratio(results[relays[0][0]], results[relays[1][0]])
        rows[1]["to_compared_rounds"] = [round(a / b, 3) for a, b in zip(
            results[relays[0][0]], results[relays[1][0]], strict=True)]
        rows[1]["cpu_to_compared"] = paired_ratio(cpu[relays[0][0]], cpu[relays[1][0]])
        rows[1]["cpu_to_compared_rounds"] = [round(a / b, 3) for a, b in zip(
            cpu[relays[0][0]], cpu[relays[1][0]], strict=True)]
    out["delivery"] = rows
    out["lag"] = bench_lag(args, work)


LOOP = """
import json, sys, threading, time
import requests
url, n, concurrency, body = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), open(sys.argv[4], "rb").read()
ends = []
def loop(count):
    with requests.Session() as s:
        for _ in range(count):
            s.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
            ends.append(time.time())
threads = [threading.Thread(target=loop, args=(n // concurrency,)) for _ in range(concurrency)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"first": min(ends), "last": max(ends), "done": len(ends)}))
"""


def loop_delivery(url: str, body_file: Path, n: int,
                  concurrency: int) -> tuple[float, float, float, float]:
    """The ceiling: a new process POSTing the same body ``n`` times from ``concurrency``
    threads, each with its session (connections reused), as a worker's delivery threads
    do: events per second from its start, seconds from its start to its first request
    done, events per second after that, and the CPU seconds (user and system) it used."""
    before = os.times()
    t0 = time.time()
    done = json.loads(subprocess.run([PY, "-c", LOOP, url, str(n), str(concurrency),
                                      str(body_file)], capture_output=True, check=True,
                                     timeout=600).stdout)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system
                                                          - before.children_system)
    return done["done"] / (done["last"] - t0), done["first"] - t0, \
        (done["done"] - 1) / (done["last"] - done["first"]), cpu


RECORD = """
import sys
from pathlib import Path
from suki_relay.store import NewEvent, open_store
folder, n, body = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]).read_bytes()
store = open_store("sqlite:///relay.db", folder)
batch = [NewEvent(f"k{i}", body, 0, "failure", None, None, False, ["all"], ["fast"])
         for i in range(n)]
for i in range(0, n, 500):
    store.record(batch[i:i + 500])
store.close()
"""


def relay_delivery(folder: Path, url: str, body_file: Path, n: int, concurrency: int,
                   python: str, tree: Path) -> tuple[float, float, float, float]:
    """One `suki-relay worker` (of the checkout at ``tree``) delivering ``n`` stored events
    to ``url``: events per second from its start, seconds from its start to its first
    delivery done, events per second after that, and the CPU seconds it used until the
    last was done (read before it is stopped; at most 0.1 s of it idle). The store is made
    by that checkout (its own schema), and read here with plain SQL, so that nothing here
    upgrades it. The times are each delivery's recorded end (``updated_at``), so how often
    this process looks does not count."""
    import sqlite3

    cfg = relay_config(folder, {"fast": {"type": "http", "url": url,
                                         "max_concurrency": concurrency}})
    data = yaml.safe_load(cfg.read_text())
    data["delivery"] = {"threads": concurrency}
    cfg.write_text(yaml.safe_dump(data))
    subprocess.run([python, "-c", RECORD, str(folder), str(n), str(body_file)], cwd=tree,
                   check=True, timeout=120)
    db = sqlite3.connect(folder / "relay.db", timeout=30)

    def ends() -> tuple[int, float, float]:
        row = db.execute("SELECT count(*), min(updated_at), max(updated_at) FROM deliveries "
                         "WHERE state = 'done'").fetchone()
        return int(row[0]), row[1], row[2]

    t0 = time.time()
    worker = subprocess.Popen([python, "-m", "suki_relay.cli", "-c", str(cfg), "worker"],
                              env=relay_env(folder), cwd=tree, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: ends()[0] == n, 600, 0.1, "all deliveries done")
        cpu = cpu_seconds(worker.pid, children=False)
        _, first, last = ends()
        return n / (last - t0), first - t0, (n - 1) / (last - first), cpu
    finally:
        os.kill(worker.pid, signal.SIGTERM)
        worker.wait(30)
        db.close()


def bench_lag(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Acknowledgement to delivery at a steady 50 events/s."""
    from suki_relay.testing import Sink

    sink = Sink(lifetime=600)
    folder = work / "lag"
    cfg = relay_config(folder, {"fast": {"type": "http", "url": sink.url}})
    port = free_port()
    acked: dict[str, float] = {}
    try:
        with server(relay_cmd(cfg, port), port, relay_env(folder)):
            url = f"http://127.0.0.1:{port}/webhooks/notification"
            with requests.Session() as s:
                for i in range(int(args.duration * 2 * 50)):
                    start = time.perf_counter()
                    body = json.dumps({**SAMPLE, "session_id": f"lag-{i}"}).encode()
                    resp = s.post(url, data=body, headers=protocol.signed_headers(SECRET, body),
                                  timeout=10)
                    acked[resp.json()["event_id"]] = time.time()
                    time.sleep(max(0.0, 0.02 - (time.perf_counter() - start)))
            wait_until(lambda: len(sink.received) >= len(acked), 60, 0.05, "deliveries")
    finally:
        sink.stop()
    lags = sorted((g.at - acked[g.headers["X-Suki-Relay-Event"]]) * 1000 for g in sink.received)
    return {"rate_per_s": 50, "events": len(lags), "p50_ms": lags[len(lags) // 2],
            "p99_ms": lags[int(len(lags) * 0.99) - 1]}


def drained(store: Any, n: int) -> bool:
    """All ``n`` deliveries done; a failed one ends the benchmark (it would never drain)."""
    counts = store.stats().deliveries
    if counts["failed"]:
        errors = {d.last_error for d in store.deliveries(state="failed", limit=5)}
        raise RuntimeError(f"{counts['failed']} deliveries failed: {sorted(map(str, errors))}")
    return bool(counts["done"] == n)


def bench_fetch(args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """Delivery with `fetch:`: the manual's HTTP recipe (fetch the note from a local Suki
    stand-in, POST it with its text to a fast target), fetch_note alone (fetch, save a
    file with fsync) and the fhir action with profile generic (fetch, file a
    DocumentReference into a server declaring conditional create; with --compare, the
    other checkout's too), each drained from the store by one `suki-relay worker`, beside
    the plain `http` forward of the same events in the same round."""
    n, concurrency = args.deliveries, 8
    success = json.loads((REPO / "suki_relay" / "samples" / "success.json").read_text())
    body = ("{\"session\": \"{{ event.session_id }}\", \"note\": {{ fetched.contents | json }}, "
            "\"text\": {{ fetched.contents | note_text | json }}}")
    target_port, suki_port, fhir_port = free_port(), free_port(), free_port()
    fhir_action = {"type": "fhir", "base_url": f"http://127.0.0.1:{fhir_port}/fhir/r4",
                   "subject": "Patient/{{ event.session_id }}"}  # profile generic, by default
    checkouts = {"": (PY, REPO)}
    if args.compare:  # the fhir path of another checkout too, in the same rounds
        tree = args.compare.resolve()
        checkouts[f" at {checkout_label(tree)}"] = (checkout_python(tree), tree)
    with server(gunicorn("bench.apps:bare", target_port), target_port), \
            server(gunicorn("bench.apps:suki_api", suki_port,  # sdp_suki_token has underscores
                            ["--header-map", "dangerous"]), suki_port), \
            server(gunicorn("bench.apps:fhir_api", fhir_port), fhir_port):
        target = f"http://127.0.0.1:{target_port}/suki/notes"
        paths: dict[str, tuple[dict[str, Any], str, Path]] = {
            "http, no fetch": ({"type": "http", "url": target}, PY, REPO),
            "http recipe with fetch": ({"type": "http", "url": target, "fetch": ["contents"],
                                        "body": body}, PY, REPO),
            "fetch_note alone": ({"type": "fetch_note", "links": ["contents"],
                                  "directory": "notes"}, PY, REPO),
            **{f"fhir generic{label}": (fhir_action, python, tree)
               for label, (python, tree) in checkouts.items()},
        }
        results: dict[str, list[float]] = {name: [] for name in paths}
        for rnd in range(args.rounds):
            names = list(paths)
            for name in names[rnd % len(names):] + names[:rnd % len(names)]:  # each first in turn
                action, python, tree = paths[name]
                folder = work / f"fetch-{rnd}-{list(paths).index(name)}-{name.split()[0]}"
                results[name].append(worker_drain(folder, action, n, concurrency, success,
                                                  suki_port, name, python, tree))
            print("  round " + str(rnd + 1) + ": " + ", ".join(
                f"{k} {v[-1]:.0f}/s" for k, v in results.items()), file=sys.stderr)
    out["fetch"] = [{"path": k, "events_s": statistics.median(v),
                     "ratio": paired_ratio(v, results["http, no fetch"]), "rounds": v}
                    for k, v in results.items()]


def bench_hl7(args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """The hl7v2 action: fetch the note from a local Suki stand-in, build and validate the
    MDM^T02, send it over MLLP to `suki-relay stand-in mllp` answering AA, one connection
    per message; beside the plain `http` forward of the same events (the ratio's base) and
    the http recipe that fetches the same note, in the same rounds, each path first in
    turn. Each path is drained from the store by one `suki-relay worker`."""
    n, concurrency = args.deliveries, 8
    success = json.loads((REPO / "suki_relay" / "samples" / "success.json").read_text())
    body = "{\"session\": \"{{ event.session_id }}\", \"text\": {{ fetched.contents | note_text | json }}}"
    target_port, suki_port, mllp_port = free_port(), free_port(), free_port()
    results: dict[str, list[float]] = {"http, no fetch": [], "http with fetch": [],
                                       "hl7v2 (fetch, MDM^T02, MLLP AA)": []}
    mllp = [PY, "-m", "suki_relay.cli.main", "stand-in", "mllp", "--port", str(mllp_port),
            "--quiet"]
    with server(gunicorn("bench.apps:bare", target_port), target_port), \
            server(gunicorn("bench.apps:suki_api", suki_port, ["--header-map", "dangerous"]),
                   suki_port), server(mllp, mllp_port):
        target = f"http://127.0.0.1:{target_port}/suki/notes"
        paths = {
            "http, no fetch": {"type": "http", "url": target},
            "http with fetch": {"type": "http", "url": target, "fetch": ["contents"],
                                "body": body},
            "hl7v2 (fetch, MDM^T02, MLLP AA)": {
                "type": "hl7v2", "host": "127.0.0.1", "port": mllp_port,
                "patient_id": ["{{ event.additional_info.patient_id }}", "", "", "HOSP", "MR"]},
        }
        for rnd in range(args.rounds):
            names = list(paths)
            for name in names[rnd % 3:] + names[:rnd % 3]:
                folder = work / f"hl7-{rnd}-{name.split()[0]}-{len(results[name])}"
                results[name].append(worker_drain(folder, paths[name], n, concurrency, success,
                                                  suki_port, name))
            print("  round " + str(rnd + 1) + ": " + ", ".join(
                f"{k} {v[-1]:.0f}/s" for k, v in results.items()), file=sys.stderr)
    out["hl7"] = [{"path": k, "events_s": statistics.median(v),
                   "ratio": paired_ratio(v, results["http, no fetch"]), "rounds": v}
                  for k, v in results.items()]


def worker_drain(folder: Path, action: dict[str, Any], n: int, concurrency: int,
                 event: dict[str, Any], suki_port: int, name: str, python: str = PY,
                 tree: Path | None = None) -> float:
    """Events per second one `suki-relay worker` delivers ``n`` stored success events
    through ``action``, timed from its first delivery done (start-up is not in it). The
    worker is ``python``'s, run in ``tree`` (another checkout's, with --compare)."""
    from suki_relay.store import NewEvent, open_store

    cfg = relay_config(folder, {"it": {**action, "max_concurrency": concurrency}})
    data = yaml.safe_load(cfg.read_text())
    data["delivery"] = {"threads": concurrency}
    data["suki"] = {"base_url": f"http://127.0.0.1:{suki_port}", "partner_id": "p",
                    "partner_token": "t"}
    cfg.write_text(yaml.safe_dump(data))
    store = open_store("sqlite:///relay.db", folder)
    batch = [NewEvent(f"k{i}", json.dumps({**event, "session_id": f"s-{i}"}).encode(),
                      0, "success", f"s-{i}", None, False, ["all"], ["it"]) for i in range(n)]
    for i in range(0, n, 500):
        store.record(batch[i:i + 500])
    worker = subprocess.Popen([python, "-m", "suki_relay.cli.main", "-c", str(cfg), "worker"],
                              env=relay_env(folder), cwd=tree, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        first = wait_until(lambda: store.stats().deliveries["done"], 60, 0.01,
                           f"a first {name} delivery")
        t0 = time.perf_counter()
        wait_until(lambda: drained(store, n), 600, 0.05, f"all {name} deliveries done")
        return (n - first) / (time.perf_counter() - t0)
    finally:
        os.kill(worker.pid, signal.SIGTERM)
        worker.wait(30)
        store.close()


# ---------------------------------------------------------------- 4: routing and rendering


def bench_routing(args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """In process: 50 rules, 20 actions with templated url, headers and body."""
    from suki_relay.config.routing import route
    from suki_relay.deliver.action import Delivery
    from suki_relay.deliver.templates import render_value
    from suki_relay.testing import build_config

    actions = {f"a{i}": {"type": "http", "url": f"http://127.0.0.1:9/{i}/{{{{ event.status }}}}",
                         "headers": {"X-Session": "{{ event.session_id }}",
                                     "X-Code": "{{ event.error_code | default('') }}"},
                         "body": '{"s": "{{ event.session_id }}", "e": "{{ event_id }}"}'}
               for i in range(20)}
    statuses = ["success", "failure", "timeout", "cancelled"]
    rules = [{"name": f"r{i}", "when": {"status": statuses[i % 4],
                                        "error_code": {"regex": f"^ERR_{i}"} if i % 3 == 0
                                        else {"exists": i % 2 == 0}},
              "do": [f"a{i % 20}", f"a{(i * 7) % 20}"]} for i in range(48)]
    rules.append({"name": "failures", "when": {"status": "failure"}, "do": ["a1", "a2"]})
    rules.append({"name": "any-specialty", "when": {"additional_info.specialty":
                                                    ["family-medicine", "pediatrics"]},
                  "do": ["a3"]})
    folder = work / "routing"
    folder.mkdir()
    config = build_config({"actions": actions, "rules": rules}, folder)
    payloads = [json.loads((REPO / "suki_relay" / "samples" / f"{s}.json").read_text())
                for s in statuses]
    n, rendered = 10000, 0

    def route_only() -> None:
        for i in range(n):
            route(config.rules, config.unmatched, payloads[i % 4])

    def route_and_render() -> None:
        nonlocal rendered
        for i in range(n):
            payload = payloads[i % 4]
            plan = route(config.rules, config.unmatched, payload)
            d = Delivery("dlv_x", "evt_x", "", 1, payload, b"", "2026-01-01T00:00:00Z")
            ctx = d.context()
            for name in plan.actions:
                render_value(config.actions[name].action.values, ctx)
                rendered += 1

    # repeated, interleaved; the best run is the figure (as timeit reports: on a shared
    # machine interference only ever slows a run down), the median is shown beside it
    rates: dict[str, list[float]] = {"route": [], "render": []}
    for _ in range(args.rounds):
        for key, run in (("route", route_only), ("render", route_and_render)):
            t0 = time.perf_counter()
            run()
            rates[key].append(n / (time.perf_counter() - t0))
    out["routing"] = {"rules": len(rules), "actions": len(actions),
                      "route_only_events_s": max(rates["route"]),
                      "route_only_median_events_s": statistics.median(rates["route"]),
                      "events_s": max(rates["render"]),
                      "median_events_s": statistics.median(rates["render"]),
                      "actions_rendered_per_event": rendered / n / args.rounds,
                      "templates_per_action": 4}


# ---------------------------------------------------------------- 5, 6: memory and store size


def send_events(port: int, count: int, threads: int = 8) -> None:
    """Exactly ``count`` distinct signed events, over keep-alive connections."""
    import http.client

    stamp = f"{os.getpid()}-{time.time()}"

    def worker(first: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(first, count, threads):
            body = json.dumps({**SAMPLE, "session_id": f"mem-{stamp}-{i}"}).encode()
            conn.request("POST", "/webhooks/notification", body,
                         protocol.signed_headers(SECRET, body))
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
        conn.close()

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bench_memory(args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """Worker RSS after 10,000 and 100,000 events; bytes per event; prune keeps it bounded."""
    folder = work / "memory"
    cfg = relay_config(folder)
    port = free_port()
    points: dict[int, int] = {}
    sizes: dict[str, int] = {}

    def db_bytes() -> int:  # the file and its WAL
        return sum(p.stat().st_size for p in folder.glob("relay.db*") if p.suffix != ".lock")

    with server(relay_cmd(cfg, port), port, relay_env(folder)) as proc:
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)],
                                                  capture_output=True, text=True).stdout.split()]
        sent = 0
        for target in (10_000, args.events):
            send_events(port, target - sent)
            sent = stored_events(folder)
            points[sent] = max(rss_kb(w) for w in workers)
            print(f"  {sent} events: worker RSS {points[sent]} kB", file=sys.stderr)
        sizes["after"] = db_bytes()
        events = stored_events(folder)
        prune = subprocess.run([PY, "-m", "suki_relay.cli.main", "-c", str(cfg), "prune",
                                "--older-than", "0s", "--json"], capture_output=True, text=True,
                               env=ENV, timeout=600)
        sizes["pruned_events"] = json.loads(prune.stdout)["deleted_events"]
        send_events(port, events)
        sizes["after_prune_and_as_many_again"] = db_bytes()
    first, last = sorted(points)[0], sorted(points)[-1]
    out["memory"] = {"events": points, "rss_ratio": points[last] / points[first]}
    out["store"] = {"events": events, "bytes": sizes["after"],
                    "bytes_per_event": sizes["after"] / events,
                    "pruned": sizes["pruned_events"],
                    "bytes_after_prune_and_refill": sizes["after_prune_and_as_many_again"]}


def footprint_config(folder: Path, on: bool, target: str, suki: str) -> Path:
    """``on``: every optional part configured (the console, recovery against a Suki
    stand-in, metrics, and one action of every built-in type: the http and sql actions
    deliver every event, the others are loaded and idle). Off: metrics off, one http
    action, nothing else."""
    actions: dict[str, Any] = {"fwd": {"type": "http", "url": target}}
    if not on:
        cfg = relay_config(folder, actions, metrics={"enabled": False})
        return cfg
    from suki_relay.console.auth import hash_password

    actions.update({
        "db": {"type": "sql", "url": "sqlite:///rows.db",
               "statement": ["CREATE TABLE IF NOT EXISTS seen (s TEXT)",
                             "INSERT INTO seen VALUES (:s)"],
               "params": {"s": "{{ event.session_id }}"}},
        "mail": {"type": "email", "to": ["a@example.org"], "from": "r@example.org",
                 "smtp": {"host": "127.0.0.1"}},
        "chat": {"type": "slack", "webhook_url": target},
        "save": {"type": "fetch_note", "directory": "notes"},
        "ehr": {"type": "fhir", "base_url": target + "fhir", "subject": "Patient/1",
                "auth": {"token_url": target + "token", "client_id": "c",
                         "client_secret": "bench-client-secret"}}})
    cfg = relay_config(folder, actions, console={
        "enabled": True, "users": {"admin": hash_password("bench password")}},
        suki={"base_url": suki, "partner_id": "p", "partner_token": "t"})
    data = yaml.safe_load(cfg.read_text())
    data["rules"] = [{"name": "all", "do": ["fwd", "db"]},
                     {"name": "idle", "when": {"additional_info.specialty": "none-such"},
                      "do": ["mail", "chat", "save", "ehr"]}]
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def bench_footprint(args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """Resident memory of each `suki-relay serve` worker (2 x 16 threads), idle after boot
    and at its largest under wrk load, with everything off and with everything on (and,
    with --compare, the other checkout's in the same rounds)."""
    relays = [("suki-relay", PY, REPO)]
    if args.compare:
        tree = args.compare.resolve()
        relays.append((f"suki-relay at {checkout_label(tree)}", checkout_python(tree), tree))
    target_port, suki_port = free_port(), free_port()
    runs: dict[str, list[dict[str, float]]] = {}
    with server(gunicorn("bench.apps:bare", target_port), target_port), \
            server(gunicorn("bench.apps:suki_api", suki_port, ["--header-map", "dangerous"]),
                   suki_port):
        for rnd in range(args.rounds):
            for name, python, tree in relays if rnd % 2 == 0 else relays[::-1]:
                for on in (False, True):
                    key = f"{name}, everything {'on' if on else 'off'}"
                    folder = work / f"footprint-{rnd}-{len(runs.get(key, []))}-{abs(hash(key))}"
                    cfg = footprint_config(folder, on, f"http://127.0.0.1:{target_port}/",
                                           f"http://127.0.0.1:{suki_port}")
                    port = free_port()
                    with server(relay_cmd(cfg, port, python), port, relay_env(folder),
                                tree) as proc:
                        time.sleep(2.0)  # settled: threads started, first polls done
                        workers = [int(p) for p in subprocess.run(
                            ["pgrep", "-P", str(proc.pid)], capture_output=True,
                            text=True).stdout.split()]
                        idle = [rss_kb(w) for w in workers]
                        peak = dict.fromkeys(workers, 0)
                        stop = threading.Event()

                        def sample(ws: list[int] = workers, pk: dict[int, int] = peak,
                                   st: threading.Event = stop) -> None:
                            while not st.wait(0.2):
                                for w in ws:
                                    pk[w] = max(pk[w], rss_kb(w))

                        sampler = threading.Thread(target=sample)
                        sampler.start()
                        lines = signed_lines(int(args.duration * 15000), folder / "load.txt")
                        try:
                            result = wrk(port, lines, args.duration, args.connections)
                        finally:
                            stop.set()
                            sampler.join()
                    runs.setdefault(key, []).append({
                        "idle_kb": statistics.median(idle), "load_kb": max(peak.values()),
                        "workers": len(workers), "rps": result["rps"]})
                    print(f"  round {rnd + 1} {key}: worker RSS idle "
                          f"{statistics.median(idle) / 1024:.1f} MiB, under load "
                          f"{max(peak.values()) / 1024:.1f} MiB", file=sys.stderr)
    rows = []
    for key, rs in runs.items():
        off = runs[key.replace("everything on", "everything off")]
        rows.append({"relay": key, "idle_mib": statistics.median(r["idle_kb"] for r in rs) / 1024,
                     "load_mib": statistics.median(r["load_kb"] for r in rs) / 1024,
                     "load_to_off": paired_ratio([r["load_kb"] for r in rs],
                                                 [r["load_kb"] for r in off]),
                     "idle_by_round_kb": [r["idle_kb"] for r in rs],
                     "load_by_round_kb": [r["load_kb"] for r in rs],
                     "req_s": statistics.median(r["rps"] for r in rs)})
    out["footprint"] = rows


def bench_scaling(args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """Acknowledgement with 1, 2 and 4 gunicorn workers (16 threads each), bare WSGI and
    the relay (SQLite; with --pg, PostgreSQL too), and two relays sharing one PostgreSQL
    (load split between them) against one; delivery drained by 1, 2 and 4 `suki-relay
    worker` processes from SQLite (with --pg: 1 and 2 from one PostgreSQL). Each figure is
    also given as a ratio to its 1-worker figure of the same round."""
    ack: dict[str, list[float]] = {}
    one_of: dict[str, str] = {}  # each figure's 1-worker (or one relay) counterpart

    def run_ack(name: str, make: Callable[[Path, int, str], list[str]], store: str,
                relays: int = 1, one: str = "") -> None:
        one_of[name] = one or name
        folder = work / f"scale-{len(ack.get(name, []))}-{abs(hash(name))}"
        folder.mkdir(parents=True)
        os.sync()
        time.sleep(1.0)
        with run_store(store) as url, contextlib.ExitStack() as stack:
            ports = []
            for i in range(relays):
                sub = folder / f"relay-{i}"
                sub.mkdir()
                port = free_port()
                stack.enter_context(server(make(sub, port, url), port, relay_env(sub)))
                ports.append(port)
            results: list[dict[str, float]] = []
            loads = [signed_lines(int(args.duration * 15000 / relays), folder / f"load-{i}.txt")
                     for i in range(relays)]
            threads = [threading.Thread(target=lambda p=p, f=f: results.append(
                wrk(p, f, args.duration, max(1, args.connections // relays))))
                for p, f in zip(ports, loads, strict=True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        rate = sum(r["rps"] for r in results)
        ack.setdefault(name, []).append(rate)
        print(f"  {name}: {rate:.0f} req/s", file=sys.stderr)

    def bare(w: int) -> Callable[[Path, int, str], list[str]]:
        return lambda d, p, u: [PY, "-m", "gunicorn", "-k", "gthread", "-w", str(w),
                                "--threads", "16", "--bind", f"127.0.0.1:{p}",
                                "--no-control-socket", "--log-level", "warning",
                                "bench.apps:bare"]

    def relay(w: int) -> Callable[[Path, int, str], list[str]]:
        return lambda d, p, u: relay_cmd(relay_config(d, store=u), p, workers=w)

    for rnd in range(args.rounds):
        for w in (1, 2, 4) if rnd % 2 == 0 else (4, 2, 1):
            n = f"{w} worker{'s' if w > 1 else ''}"
            run_ack(f"bare WSGI, {n}", bare(w), "", one="bare WSGI, 1 worker")
            run_ack(f"relay on SQLite, {n}", relay(w), "sqlite:///relay.db",
                    one="relay on SQLite, 1 worker")
            if args.pg:
                run_ack(f"relay on PostgreSQL, {n}", relay(w), args.pg,
                        one="relay on PostgreSQL, 1 worker")
        if args.pg:
            run_ack("two relays on one PostgreSQL, 2 workers each", relay(2), args.pg, 2,
                    one="relay on PostgreSQL, 2 workers")
    delivery: dict[str, list[float]] = {}
    port = free_port()
    body = json.dumps(SAMPLE).encode()
    with server(gunicorn("bench.apps:bare", port), port):
        url = f"http://127.0.0.1:{port}/"
        for rnd in range(args.rounds):
            plans = [("SQLite", "sqlite:///relay.db", w) for w in (1, 2, 4)]
            if args.pg:
                plans += [("PostgreSQL", args.pg, w) for w in (1, 2)]
            for backend, store, w in plans if rnd % 2 == 0 else plans[::-1]:
                name = f"delivery from {backend}, {w} worker process{'es' if w > 1 else ''}"
                one_of[name] = f"delivery from {backend}, 1 worker process"
                folder = work / f"scale-delivery-{rnd}-{abs(hash(name))}"
                with run_store(store) as store_url:
                    rate = drain_with(folder, store_url, url, body, args.deliveries, w)
                delivery.setdefault(name, []).append(rate)
                print(f"  {name}: {rate:.0f} events/s", file=sys.stderr)

    def rows(results: dict[str, list[float]], unit: str) -> list[dict[str, Any]]:
        table = []
        for name, rates in results.items():
            one = results.get(one_of[name])
            table.append({"what": name, unit: statistics.median(rates),
                          "to_one": paired_ratio(rates, one) if one else None,
                          "by_round": rates})
        return table

    out["scaling"] = {"cores": os.cpu_count(), "ack": rows(ack, "req_s"),
                      "delivery": rows(delivery, "events_s")}


def drain_with(folder: Path, store_url: str, target: str, body: bytes, n: int,
               processes: int) -> float:
    """Events per second ``processes`` `suki-relay worker` processes (8 delivery threads
    each) drain ``n`` stored events to ``target``, timed from the first delivery done."""
    from suki_relay.store import NewEvent, open_store

    cfg = relay_config(folder, {"fast": {"type": "http", "url": target,
                                         "max_concurrency": 8 * processes}}, store=store_url)
    data = yaml.safe_load(cfg.read_text())
    data["delivery"] = {"threads": 8}
    cfg.write_text(yaml.safe_dump(data))
    store = open_store(store_url, folder)
    batch = [NewEvent(f"k{i}", body, 0, "failure", None, None, False, ["all"], ["fast"])
             for i in range(n)]
    for i in range(0, n, 500):
        store.record(batch[i:i + 500])
    workers = [subprocess.Popen([PY, "-m", "suki_relay.cli", "-c", str(cfg), "worker"],
                                env=relay_env(folder), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for _ in range(processes)]
    try:
        first = wait_until(lambda: store.stats().deliveries["done"], 60, 0.01, "a delivery")
        t0 = time.perf_counter()
        wait_until(lambda: store.stats().deliveries["done"] == n, 600, 0.05, "all done")
        return (n - first) / (time.perf_counter() - t0)
    finally:
        for w in workers:
            os.kill(w.pid, signal.SIGTERM)
        for w in workers:
            w.wait(30)
        store.close()


# ---------------------------------------------------------------- profile


def profile_request_path(work: Path, out: dict[str, Any]) -> None:
    """cProfile of the in-process request path (SQLite store, no actions)."""
    from werkzeug.test import EnvironBuilder

    from suki_relay.config.load import load_config
    from suki_relay.serve.assemble import create_app

    folder = work / "profile"
    cfg = relay_config(folder)
    app = create_app(config=load_config(cfg), deliver=False)
    n = 2000
    environs = []
    for i in range(n):
        body = json.dumps({**SAMPLE, "session_id": f"p-{i}"}).encode()
        environs.append(EnvironBuilder(path="/webhooks/notification", method="POST", data=body,
                                       headers=protocol.signed_headers(SECRET, body)).get_environ())

    def run() -> None:
        for env in environs:
            list(app(env, lambda *a: None))

    profiler = cProfile.Profile()
    profiler.runcall(run)
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (file, _, func), (_, _, tt, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, f"{Path(file).name}:{func}"))
    rows.sort(reverse=True)
    out["profile"] = {"requests": n, "us_per_request": total / n * 1e6,
                      "top_self_time": [{"where": w, "share": round(t / total, 3)}
                                        for t, w in rows[:10]]}


# ---------------------------------------------------------------- main


PARTS = {"ack": bench_ack, "stall": bench_stall, "delivery": bench_delivery,
         "fetch": bench_fetch, "hl7": bench_hl7, "routing": bench_routing, "memory": bench_memory}
EXTRA = {"breakdown": bench_breakdown, "flood": bench_flood,  # only when named in --only
         "footprint": bench_footprint, "scaling": bench_scaling}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", nargs="*", choices=[*PARTS, *EXTRA, "profile"], default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--deliveries", type=int, default=3000)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--pg", default=None, metavar="URL",
                   help="also measure acknowledgement on this PostgreSQL (a schema per run)")
    p.add_argument("--compare", type=Path, default=None, metavar="CHECKOUT",
                   help="also measure acknowledgement and delivery by the relay in another\n"
                        "checkout (an earlier release, say) in the same rounds: before and\n"
                        "after, paired")
    p.add_argument("--handlers", nargs="*", default=None, metavar="TEXT",
                   help="acknowledgement and breakdown: only the handlers (steps) whose\n"
                        "name contains one of these (and bare WSGI), e.g. --handlers "
                        "'spool disabled' 'PostgreSQL ('")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args()
    out: dict[str, Any] = {"machine": {"cores": os.cpu_count()}, "args": vars(args) | {
        "out": str(args.out)}}
    with tempfile.TemporaryDirectory(prefix="suki-relay-bench-") as tmp:
        work = Path(tmp)
        for name in args.only or [*PARTS, "profile"]:
            print(f"== {name}", file=sys.stderr)
            if name == "profile":
                profile_request_path(work, out)
            else:
                (PARTS | EXTRA)[name](args, work, out)
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
