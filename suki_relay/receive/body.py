"""Reading a request body within one deadline for the whole body.

A socket timeout bounds each read, so a client that sends a byte a second never trips it
and holds a thread (gthread) or the whole worker (sync) for as long as it likes. Here
every body read is registered with the process's watchdog (suki_relay/watchdog.py); when
the body is still not in at its deadline, the reading side of the socket is shut down. The
blocked read then ends at once, and the request is answered 408.

Only a server that exposes the client socket (gunicorn: ``gunicorn.socket``) can be cut
off; elsewhere the body is read as before.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from werkzeug.wsgi import get_content_length, get_input_stream

from suki_relay.watchdog import watchdog

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment


class TooSlow(Exception):
    """The body did not arrive within the read timeout."""


class _Read:
    """One body being read: its socket's reading side is shut down at the deadline unless
    the read is done by then."""

    __slots__ = ("deadline", "done", "fired", "lock", "sock")

    def __init__(self, sock: Any, deadline: float):
        self.sock = sock
        self.deadline = deadline
        self.done = False
        self.fired = False
        self.lock = threading.Lock()

    def expire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.fired = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)  # a blocked recv returns at once, with nothing

    def finish(self) -> bool:
        """Done reading; whether the deadline cut it off first."""
        with self.lock:
            self.done = True
            return self.fired


def stop_reading(environ: WSGIEnvironment) -> None:
    """End the reading side of the request's connection (under gunicorn), for a request
    answered without its body read to the end: kept alive, the connection would be read to
    the end of its declared body before its next request, by the server, with no deadline
    (a client dripping it held a thread for as long as it liked). The answer is still sent;
    then the connection is closed. A ``Connection: close`` header would not do: gunicorn
    drops the headers PEP 3333 leaves to the server."""
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)


def read_body(environ: WSGIEnvironment, limit: int, timeout: float) -> bytes:
    """Up to ``limit`` bytes of the body, all within ``timeout`` seconds (TooSlow if not)."""
    stream = get_input_stream(environ)
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return stream.read(limit)
    read = _Read(sock, time.monotonic() + timeout)
    watchdog.watch(read)
    try:
        body = stream.read(limit)
    except Exception:
        if read.finish():
            raise TooSlow() from None
        raise
    if read.finish():  # cut off: whatever was read is short (unless it ended just in time)
        expected = get_content_length(environ)
        if expected is None or len(body) < min(expected, limit):
            raise TooSlow()
    return body
