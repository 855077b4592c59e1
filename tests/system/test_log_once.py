"""A log line is written once: lines the master queued before forking workers are not
written again by the workers (they used to be, when each worker exited)."""

from __future__ import annotations

import signal

import pytest

from suki_relay.testing import wait_until


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # not about the store
def test_reload_lines_are_written_once(write_config, relay) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config()
    r = relay(cfg, workers=2)
    for n in range(1, 4):
        cfg.write_text(cfg.read_text() + f"# edit {n}\n")
        r.signal(signal.SIGHUP)  # each reload replaces both workers
        wait_until(lambda n=n: r.logs().count("config reloaded") >= n,
                   message=f"reload {n} logged")
    cfg.write_text(cfg.read_text() + "rules: [\n")
    r.signal(signal.SIGHUP)
    wait_until(lambda: "config rejected" in r.logs(), message="the rejection logged")
    r.signal(signal.SIGHUP)  # the workers forked after the rejection exit, and are replaced
    wait_until(lambda: r.logs().count("config rejected") >= 2, message="the second rejection")
    assert r.stop() == 0
    logs = r.logs()
    assert logs.count("config reloaded") == 3, logs
    assert logs.count("config rejected") == 2, logs
