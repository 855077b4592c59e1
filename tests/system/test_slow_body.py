"""A client that drips its body cannot hold the relay: the whole body must arrive within
receiver.read_timeout_seconds, however steadily it trickles."""

from __future__ import annotations

import select
import socket
import threading
import time

import pytest

from suki_relay.testing import post_signed, unique_body


def drip(port: int, answers: list[bytes], started: threading.Event) -> None:
    """Plausible headers, then one byte of body every 0.3 s: never a pause long enough
    for a per-read timeout. Gives up by itself after 40 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /webhooks/notification HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 1000\r\n"
                  b"generated-at: 1\r\nX-API-Key: " + b"a" * 64 + b"\r\n\r\n")
        started.set()
        end = time.monotonic() + 40
        while time.monotonic() < end:
            readable, _, _ = select.select([s], [], [], 0.3)
            if readable:
                answers.append(read_answer(s, end))
                return
            try:
                s.sendall(b" ")
            except OSError:
                answers.append(b"cut off")
                return
        answers.append(b"")


def read_answer(s: socket.socket, end: float) -> bytes:
    """The whole answer: everything until the relay closes the connection (a 408 says
    Connection: close), however many segments it comes in; what came by ``end`` if not."""
    got = b""
    while time.monotonic() < end:
        s.settimeout(max(0.1, end - time.monotonic()))
        try:
            chunk = s.recv(4096)
        except OSError:  # reset after the answer, or the time is up
            break
        if not chunk:
            break
        got += chunk
    return got or b"cut off"


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # not about the store
@pytest.mark.parametrize("plain", [False, True], ids=["serve-gthread", "plain-gunicorn-sync"])
def test_dripping_clients_are_cut_off_and_others_are_served(write_config, relay,
                                                            plain: bool) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config({"receiver": {"secrets": ["test-secret"], "read_timeout_seconds": 2}})
    # one process; gthread with 2 threads, or one sync worker: 3 drippers take every thread
    r = relay(cfg, plain_gunicorn=plain, workers=1, threads=2)
    answers: list[bytes] = []
    drippers = []
    for _ in range(3):
        started = threading.Event()
        t = threading.Thread(target=drip, args=(r.port, answers, started), daemon=True)
        t.start()
        started.wait(10)
        drippers.append(t)
    good = post_signed(r.webhook, unique_body(), timeout=30)  # waits for a thread
    assert good.status_code == 200
    for t in drippers:
        t.join(45)
    assert len(answers) == 3
    assert all(a.startswith(b"HTTP/1.1 408") or a == b"cut off" for a in answers), answers
    timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
    assert timed_out, answers
    assert all(b"request_timeout" in a for a in timed_out), answers  # each answer whole


def refused_then_drip(port: int, head: bytes, answers: list[bytes], stop: threading.Event) -> None:
    """A request refused before its body is read (declared too large, or not JSON, or to
    another path), then its body one byte a second on the same connection, until ``stop``:
    kept alive, the server would read the rest to find the next request, for as long as
    it drips."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head)
        answers.append(s.recv(4096).split(b"\r\n", 1)[0])
        while not stop.wait(1.0):
            try:
                s.sendall(b" ")
            except OSError:
                return


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # not about the store
def test_a_refused_body_dripped_afterwards_holds_no_thread(write_config, relay) -> None:  # type: ignore[no-untyped-def]
    """Every answer given before the body is read says Connection: close: gthread would
    otherwise keep the connection and read the rest of the declared body, with no
    deadline, before the next request on it, one thread per connection held."""
    r = relay(write_config(), workers=1, threads=2)
    heads = [b"POST /webhooks/notification HTTP/1.1\r\nHost: x\r\nContent-Type: "
             b"application/json\r\nContent-Length: 5000000\r\n\r\n",
             b"POST /webhooks/notification HTTP/1.1\r\nHost: x\r\nContent-Type: "
             b"text/plain\r\nContent-Length: 1000\r\n\r\n",
             b"POST /elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"]
    answers: list[bytes] = []
    stop = threading.Event()
    drippers = [threading.Thread(target=refused_then_drip, args=(r.port, head, answers, stop),
                                 daemon=True) for head in heads]
    try:
        for t in drippers:
            t.start()
            time.sleep(0.3)
        good = post_signed(r.webhook, unique_body(), timeout=10)
        assert good.status_code == 200
    finally:
        stop.set()
        for t in drippers:
            t.join(10)
    assert sorted(answers) == [b"HTTP/1.1 404 Not Found", b"HTTP/1.1 413 Request Entity Too Large",
                               b"HTTP/1.1 415 Unsupported Media Type"]
