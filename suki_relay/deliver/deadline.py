"""The deadline of one outbound request: connect, send, status line, headers and body.

A per-read timeout does not bound a target that drips a byte at a time, so every request
made through :func:`suki_relay.deliver.outbound.send` registers an :class:`Attempt` with the
process's watchdog (suki_relay/watchdog.py); when its deadline passes, it shuts down the socket
of every connection the attempt used, which ends whatever the requesting thread is blocked
in. Connections join the current thread's attempt through requests' adapter
(:func:`ensure_adapter`), so nothing else about requests changes; any other client with
a ``sock`` attribute (the email action's SMTP client) joins by :meth:`Attempt.add`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool

from suki_relay.watchdog import watchdog


class Connection(Protocol):
    """What an attempt shuts down: anything holding its current socket as ``sock``
    (urllib3's connections, smtplib's client; read when the time is up, so a socket
    replaced by its TLS wrapper is the one shut down)."""

    sock: Any


class Attempt:
    """One request's deadline and the connections it used; shut down when it passes."""

    __slots__ = ("conns", "deadline", "done", "expired", "lock")

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.conns: list[Connection] = []
        self.done = False
        self.expired = False
        self.lock = threading.Lock()

    def add(self, conn: Connection) -> None:
        """Shut ``conn`` down when the time is up (at once, if it already is)."""
        with self.lock:
            self.conns.append(conn)
            if not self.expired:
                return
        _shutdown(conn)

    def expire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.expired = True
            conns = list(self.conns)
        for conn in conns:
            _shutdown(conn)


def _shutdown(conn: Connection) -> None:
    """End whatever the connection's socket is blocked in (another thread is reading it).
    The plain socket's shutdown is used even under TLS: it acts on the descriptor and
    leaves the TLS object to fail in the reading thread, which expects it."""
    sock = conn.sock
    if sock is None:
        return
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


current = threading.local()


@contextmanager
def bounded(seconds: float) -> Iterator[Attempt]:
    """An attempt that ends ``seconds`` from now: connections added to it are shut down
    then, unless the block has finished (after which the watchdog leaves them alone)."""
    attempt = Attempt(time.monotonic() + seconds)
    watchdog.watch(attempt)
    try:
        yield attempt
    finally:
        with attempt.lock:
            attempt.done = True


class _JoinsDeadline:
    """A connection that joins the current request's deadline each time it is used."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        attempt: Attempt | None = getattr(current, "attempt", None)
        if attempt is not None:
            attempt.add(self)  # type: ignore[arg-type]
        super().request(*args, **kwargs)  # type: ignore[misc]


class _Connection(_JoinsDeadline, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_JoinsDeadline, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _Connection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter with connections that join the current request's deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOLS
        return manager


def ensure_adapter(session: requests.Session) -> None:
    if not isinstance(session.get_adapter("https://x/"), _Adapter):
        session.mount("https://", _Adapter())
        session.mount("http://", _Adapter())
