"""MLLP for the ``hl7v2`` action: one message out, its acknowledgement back, on one
connection, within one deadline.

A message travels as 0x0B, the message, 0x1C 0x0D (the minimal lower layer protocol of
HL7 v2). The acknowledgement is read up to its end block and no further, at most
:data:`MAX_ACK_BYTES`; anything an engine sends before the start block is skipped.
``timeout_seconds`` bounds connecting, the TLS handshake, sending and the answer
together: the outbound deadline's watchdog shuts the socket down when it passes, so an
engine that drips its answer a byte at a time is cut off as one that never answers.

What went wrong says whether the engine may have the message: :class:`NotSent` (could
not connect, TLS refused) means it cannot; :class:`NoAnswer` (sent, then no whole
acknowledgement) means it may. python-hl7's ``MLLPClient`` is not used: it takes
whatever one ``recv(4096)`` returns as the answer.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from suki_relay.plugin import deadline

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_ACK_BYTES = 64 * 1024


class NotSent(Exception):
    """The message did not leave: the engine cannot have it."""


class NoAnswer(Exception):
    """The message was sent (or partly), and no whole acknowledgement came back."""


def frame(message: bytes) -> bytes:
    return START_BLOCK + message + END_BLOCK


@dataclass
class _Holder:
    """What the deadline shuts down: the connection's current socket."""

    sock: Any = None


def exchange(host: str, port: int, message: bytes, timeout: float,
             context: ssl.SSLContext | None = None) -> bytes:
    """Send ``message`` framed; return the acknowledgement's content (without framing)."""
    holder = _Holder()
    with deadline.bounded(timeout) as attempt:
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise NotSent(_why(exc, attempt.expired, timeout, "could not connect")) from None
        holder.sock = raw
        attempt.add(holder)
        try:
            try:
                sock = context.wrap_socket(raw, server_hostname=host) if context else raw
            except (OSError, ssl.SSLError) as exc:
                raise NotSent(_why(exc, attempt.expired, timeout, "TLS handshake failed")) from None
            holder.sock = sock
            sent = False
            try:
                sock.sendall(frame(message))
                sent = True
                return read_frame(sock)
            except NoAnswer as exc:
                if attempt.expired:
                    raise NoAnswer(f"no acknowledgement within {timeout:g}s") from None
                raise NoAnswer(str(exc)) from None
            except OSError as exc:
                # the socket's own timeout (the same length, started a moment later) may
                # end the wait for the answer just before the watchdog does: the same case
                if sent and (attempt.expired or isinstance(exc, TimeoutError)):
                    raise NoAnswer(f"no acknowledgement within {timeout:g}s") from None
                raise NoAnswer(_why(exc, attempt.expired, timeout, "connection failed")) from None
        finally:
            with contextlib.suppress(OSError):
                (holder.sock or raw).close()


def read_frame(sock: socket.socket, limit: int = MAX_ACK_BYTES) -> bytes:
    """One framed block's content: bytes before the start block are skipped; NoAnswer if
    the connection ends first or the block is longer than ``limit``."""
    buffer = b""
    started = False
    while True:
        chunk = sock.recv(8192)
        if not chunk:
            raise NoAnswer("the engine closed the connection before a whole acknowledgement")
        buffer += chunk
        if not started:
            at = buffer.find(START_BLOCK)
            if at < 0:
                buffer = b""
                continue
            buffer, started = buffer[at + 1:], True
        end = buffer.find(END_BLOCK)
        if end >= 0:
            return buffer[:end]
        if len(buffer) > limit:
            raise NoAnswer(f"the acknowledgement is longer than {limit // 1024} KiB")


def _why(exc: BaseException, expired: bool, timeout: float, what: str) -> str:
    if expired or isinstance(exc, TimeoutError):
        return f"{what}: not done within {timeout:g}s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{what}: the engine's certificate was not accepted ({exc.verify_message})"
    return f"{what} ({type(exc).__name__})"
