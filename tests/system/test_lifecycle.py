"""One process lifecycle (serve/process.py), started and stopped by gunicorn's hooks under
`suki-relay serve` and under plain gunicorn with the gunicorn.conf.py that `init` writes
(with and without --preload), and by the worker itself under plain gunicorn without it.

Whichever way, a graceful stop lets a delivery under way finish and records it before the
store is closed, and the parts run in each worker, not in the master.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import yaml

from suki_relay.testing import SECRET, Reply, post_signed, unique_body, wait_until
from tests.support.relay import RelayProcess

from ..conftest import FAST_DELIVERY, http_action, open_test_store, run_cli

WAYS = {
    "serve": {"plain_gunicorn": False},
    "plain-gunicorn-with-conf": {"plain_gunicorn": True},
    "plain-gunicorn-with-conf-preload": {"plain_gunicorn": True,
                                         "gunicorn_args": ("--preload",)},
    "plain-gunicorn-without-conf": {"plain_gunicorn": True},
}


def test_the_package_starts_nothing_by_itself() -> None:
    """No fork hooks, exit hooks or stack walks: the lifecycle is the one way."""
    package = Path(__file__).resolve().parents[2] / "suki_relay"
    found = [f"{p.relative_to(package)}: {needle}" for p in package.rglob("*.py")
             for needle in ("register_at_fork", "atexit", "_getframe")
             if needle in p.read_text(encoding="utf-8")]
    assert found == []


@pytest.mark.parametrize("way", list(WAYS))
def test_a_graceful_stop_finishes_the_delivery_under_way(tmp_path: Path, sink, way: str) -> None:  # type: ignore[no-untyped-def]
    target = sink(default=Reply(200, delay=2.0))
    if "with-conf" in way:  # `suki-relay init` writes it; gunicorn reads it from its folder
        done = run_cli("init", str(tmp_path))
        assert done.returncode == 0 and "gunicorn.conf.py" in done.stdout, done.stderr
        assert (tmp_path / "gunicorn.conf.py").is_file()
    cfg = tmp_path / "actions.yaml"
    cfg.write_text(yaml.safe_dump({
        "receiver": {"secrets": [SECRET]}, "store": "sqlite:///relay.db",
        "delivery": {**FAST_DELIVERY, "shutdown_seconds": 15},
        "actions": {"target": http_action(target.url, timeout_seconds=10)},
        "rules": [{"name": "all", "do": ["target"]}]}))
    node = RelayProcess(cfg, workers=2, **WAYS[way])  # type: ignore[arg-type]
    try:
        node.start()
        event_id = post_signed(node.webhook, unique_body()).json()["event_id"]
        wait_until(lambda: target.active >= 1, message="the delivery under way")
        node.signal(signal.SIGTERM)
        assert node.proc is not None and node.proc.wait(40) == 0
    finally:
        node.stop(timeout=15)
    assert len(target.received) == 1
    store = open_test_store("sqlite:///relay.db", tmp_path)
    [delivery] = store.deliveries(event_id=event_id)
    assert delivery.state == "done", node.logs()
    logs = node.logs()
    assert "Traceback" not in logs
    assert logs.count("outcome=accepted") == 1  # each line once (not again by a worker)
