"""The test kit for plugin authors (the relay's own tests use it too): real local servers
as stand-ins, and an action built and run as the relay builds and runs it. The relay's
private helpers (relays in processes, private PostgreSQL clusters) live in tests/support.

* :class:`Sink` - an HTTP server on 127.0.0.1 that records what it receives and answers
  as scripted (status sequence, delay, headers); stops itself after ``lifetime`` seconds.
* :class:`RawServer` - a TCP server on 127.0.0.1 that answers with raw bytes as scripted:
  a reply whose headers or body never end, or anything else HTTP libraries will not send.
* :class:`SukiStandIn` - Suki's follow-up API on 127.0.0.1 (login, content, transcript,
  status, structured data), for actions that ``fetch:``.
* :func:`build_action` - an action built through the registry and the config loader,
  validated exactly as actions.yaml would be; :func:`build_spec` the same with its core
  options (``fetch``, ``retry``), and :func:`attempt_once` one attempt as the deliverer
  makes it (links fetched first).
* :func:`make_delivery` - a Delivery for a sample or a payload of your own.
* The servers (Sink, RawServer, SukiStandIn) are in testing_servers.py.
* :func:`post_signed`, :func:`wait_until`, :func:`in_thread`, :func:`free_port`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import yaml

from suki_relay import protocol
from suki_relay.config.check import sample
from suki_relay.config.load import ActionSpec, Config, parse_config
from suki_relay.deliver.action import Action, Delivery
from suki_relay.testing_servers import NOTE, TRANSCRIPT, RawServer, Received, Reply, Sink, SukiStandIn, drip

__all__ = [
    "NOTE", "SECRET", "TRANSCRIPT", "RawServer", "Received", "Reply", "Sink", "SukiStandIn",
    "attempt_once", "build_action", "build_config", "build_spec", "drip", "free_port",
    "in_thread", "make_delivery", "plant_netrc", "post_signed", "unique_body", "wait_until"]

SECRET = "test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll until predicate() is truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def in_thread(fn: Callable[[], Any], wait: float = 20.0) -> Any:
    """Run ``fn`` in a thread; fail if it is still running after ``wait`` seconds (a hung
    call is the bug these tests look for, and the test must end either way)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(wait)
    assert not thread.is_alive(), f"still running after {wait}s: the deadline did not hold"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def plant_netrc(monkeypatch: Any, home: Path) -> None:
    """A ~/.netrc with credentials for 127.0.0.1 and no proxy settings (through pytest's
    ``monkeypatch``): a test then shows that no request hands them to a target."""
    netrc = home / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password hunter2\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(home))
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def post_signed(url: str, body: bytes, secret: str = SECRET, *, timeout: float = 10.0,
                headers: dict[str, str] | None = None, now: float | None = None
                ) -> requests.Response:
    sent = protocol.signed_headers(secret, body, now)
    sent.update(headers or {})
    return requests.post(url, data=body, headers=sent, timeout=timeout)


def unique_body(name: str = "failure", **fields: Any) -> bytes:
    """A sample with a fresh session id (and any fields replaced)."""
    payload = json.loads(sample(name))
    payload["session_id"] = os.urandom(8).hex()
    payload.update(fields)
    return json.dumps(payload).encode()


# ---------------------------------------------------------------- actions in isolation


def build_config(config: dict[str, Any], base_dir: Path) -> Config:
    """Write ``config`` (with a test secret if none) to base_dir/actions.yaml and load it."""
    config = {"receiver": {"secrets": [SECRET]}, **config}
    path = base_dir / "actions.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return parse_config(path.read_text(encoding="utf-8"), path)


def build_spec(type_name: str, options: dict[str, Any], base_dir: Path,
               **top_level: Any) -> ActionSpec:
    """One action with its core options (fetch, retry, max_concurrency), validated and built
    exactly as from actions.yaml (ConfigError if bad)."""
    config = build_config({"actions": {"under-test": {"type": type_name, **options}},
                           **top_level}, base_dir)
    return config.actions["under-test"]


def build_action(type_name: str, options: dict[str, Any], base_dir: Path,
                 **top_level: Any) -> Action:
    """One action, validated and built exactly as from actions.yaml (ConfigError if bad)."""
    return build_spec(type_name, options, base_dir, **top_level).action


def attempt_once(spec: ActionSpec, delivery: Delivery) -> str | None:
    """One attempt as the deliverer makes it: the links under ``fetch:`` are fetched, then
    the action delivers. Raises what the action (or the fetch) raised."""
    from suki_relay.deliver.deliverer import perform

    return perform(spec, delivery)


def make_delivery(event: str | dict[str, Any] = "success", action: str = "under-test",
                  attempt: int = 1) -> Delivery:
    body = sample(event) if isinstance(event, str) else json.dumps(event).encode()
    return Delivery(id="dlv_test", event_id="evt_test", action=action, attempt=attempt,
                    event=json.loads(body), raw_body=body, received_at="2026-01-01T00:00:00.000Z")
