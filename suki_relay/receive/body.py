"""Reading a request body within one deadline for the whole body.

A socket timeout bounds each read, so a client that sends a byte a second never trips it
and holds a thread (gthread) or the whole worker (sync) for as long as it likes. Here
every body read is registered with a deadline; one watchdog thread per process, asleep
until the oldest deadline, shuts the reading side of a socket whose body is still not in
when its time is up. The blocked read then ends at once, and the request is answered 408.
The request thread itself pays an append to a deque and a flag write.

Only a server that exposes the client socket (gunicorn: ``gunicorn.socket``) can be cut
off; elsewhere the body is read as before.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from werkzeug.wsgi import get_content_length, get_input_stream

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

IDLE_SECONDS = 1.0  # the watchdog looks at least this often


class TooSlow(Exception):
    """The body did not arrive within the read timeout."""


class _Watch:
    __slots__ = ("deadline", "done", "fired", "sock")

    def __init__(self, sock: Any, deadline: float):
        self.sock = sock
        self.deadline = deadline
        self.done = False
        self.fired = False


class Watchdog:
    """One thread per process. Deadlines are kept in arrival order, which is deadline order
    as long as the timeout is the same for every read (it is per process)."""

    def __init__(self) -> None:
        self._watches: deque[_Watch] = deque()
        self._running = False  # in this process (a forked child starts its own thread)
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._watches = deque()  # a child watches only its own reads
        self._running = False
        self._lock = threading.Lock()

    def watch(self, sock: Any, seconds: float) -> _Watch:
        if not self._running:
            self._start()
        w = _Watch(sock, time.monotonic() + seconds)
        self._watches.append(w)
        return w

    def _start(self) -> None:
        with self._lock:
            if self._running:
                return
            threading.Thread(target=self._run, args=(self._watches,),
                             name="suki-read-deadline", daemon=True).start()
            self._running = True

    def _run(self, watches: deque[_Watch]) -> None:
        while True:
            wait = IDLE_SECONDS
            while watches:
                w = watches[0]
                if w.done:
                    watches.popleft()
                    continue
                left = w.deadline - time.monotonic()
                if left > 0:
                    wait = min(wait, left)
                    break
                watches.popleft()
                _cut_off(w)
            time.sleep(wait)


def _cut_off(w: _Watch) -> None:
    w.fired = True
    with contextlib.suppress(OSError):
        w.sock.shutdown(socket.SHUT_RD)  # a blocked recv returns at once, with nothing


_watchdog = Watchdog()


def read_body(environ: WSGIEnvironment, limit: int, timeout: float) -> bytes:
    """Up to ``limit`` bytes of the body, all within ``timeout`` seconds (TooSlow if not)."""
    stream = get_input_stream(environ)
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return stream.read(limit)
    w = _watchdog.watch(sock, timeout)
    try:
        body = stream.read(limit)
    except Exception:
        if w.fired:
            raise TooSlow() from None
        raise
    finally:
        w.done = True
    if w.fired:  # cut off: whatever was read is short (unless it ended just in time)
        expected = get_content_length(environ)
        if expected is None or len(body) < min(expected, limit):
            raise TooSlow()
    return body
