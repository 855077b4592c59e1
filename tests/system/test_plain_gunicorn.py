"""Plain `gunicorn 'suki_relay.wsgi:app'`, no flags, behaves as `suki-relay serve`:
metrics summed across workers (its reloads: test_reload.py)."""

from __future__ import annotations

import os
import signal

import pytest
import requests

from suki_relay.testing import post_signed, unique_body

from .test_metrics import metric


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # not about the store
def test_metrics_are_summed_across_workers(write_config, relay) -> None:  # type: ignore[no-untyped-def]
    r = relay(write_config(), plain_gunicorn=True, workers=2)
    workers = r.worker_pids()
    assert len(workers) == 2
    for busy in workers:  # each worker alone answers 3 requests while the other is stopped
        other = next(p for p in workers if p != busy)
        os.kill(other, signal.SIGSTOP)
        try:
            for _ in range(3):
                assert post_signed(r.webhook, unique_body()).status_code == 200
        finally:
            os.kill(other, signal.SIGCONT)
    for _ in range(6):  # whichever worker answers the scrape
        text = requests.get(r.url + "/metrics", timeout=10).text
        assert metric(text, "suki_relay_requests_total", outcome="accepted") == 6
        assert metric(text, "suki_relay_events_total", status="failure") == 6


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # not about the store
def test_preload_without_the_conf_file_refuses_to_start(write_config, relay) -> None:  # type: ignore[no-untyped-def]
    """--preload imports the app in gunicorn's master: without gunicorn.conf.py's hooks the
    parts would start there (the master's store connections copied into every worker by
    the fork, no body deadline or refusal trace in any worker). gunicorn exits, saying
    what to do, instead of serving that way."""
    r = relay(write_config(), run=False, plain_gunicorn=True, gunicorn_args=("--preload",))
    r.start(wait=False)
    assert r.proc is not None
    assert r.proc.wait(15) != 0
    assert "needs the gunicorn.conf.py that `suki-relay init` writes" in r.logs()
