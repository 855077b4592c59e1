"""An MLLP listener standing in for a hospital's interface engine, flaws included: a real
TCP server (TLS and mutual TLS if given a context) that acknowledges each HL7 v2 message
as scripted. Used by the tests, the benchmark and `suki-relay stand-in mllp`.

What real engines do, each an :class:`Answer`: acknowledge (``AA``, ``AE``, ``AR``, or
the commit codes ``CA``, ``CE``, ``CR``, with an MSA-3 text), answer late (``delay``),
drop the connection after reading the message (``drop``), never answer (``silent``),
acknowledge another message (``wrong_control_id``), add an ERR segment (``err``).
``answers`` are used in order, then ``default`` for ever. A message answered with an
accepting code is ``filed`` as soon as it is read, whatever becomes of the answer (a drop
after receiving is the case that matters); with ``dedupe`` a message whose MSH-10 was
filed before is not filed again, and is acknowledged again, as an engine set up to
de-duplicate does. Connections may carry one message or many. Everything stops after ``lifetime`` seconds.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from suki_relay.testing_servers import StandIn, accept_until

START, END = b"\x0b", b"\x1c\x0d"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
ACCEPTED = ("AA", "CA")


@dataclass
class Answer:
    code: str = "AA"
    text: str = ""
    delay: float = 0.0  # seconds before the acknowledgement
    drop: bool = False  # close the connection once the message is read, with no answer
    silent: bool = False  # never answer (the connection stays open)
    wrong_control_id: bool = False  # MSA-2 names another message
    # an ERR segment after MSA, as sent after "ERR": "||PID^1^3|103^Table value not found|E"
    err: str = ""


@dataclass
class Received:
    text: str  # the message as received (segments ended by carriage returns)
    control_id: str
    at: float
    answer: Answer = field(default_factory=Answer)


class MllpStandIn(StandIn):
    def __init__(self, default: Answer | None = None, answers: Iterable[Answer] = (),
                 host: str = "127.0.0.1", port: int = 0, context: ssl.SSLContext | None = None,
                 dedupe: bool = False, lifetime: float | None = 120.0,
                 on_message: Callable[[Received], None] | None = None):
        self.default = default or Answer()
        self.answers = list(answers)
        self.context = context
        self.dedupe = dedupe
        self.on_message = on_message
        self.received: list[Received] = []
        self.filed: list[Received] = []  # accepted, once per MSH-10 with dedupe
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.2)
        self.host, self.port = host, int(self._listener.getsockname()[1])
        self._deadline = None if lifetime is None else time.monotonic() + lifetime
        self._acks = 0
        self._thread = threading.Thread(target=self._serve, name="mllp-stand-in", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- serving

    def _serve(self) -> None:
        accept_until(self._listener, self.stopped, self._deadline, self._connection)

    def _connection(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(1.0)
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            buffer = b""
            while not self.stopped.is_set():
                end = buffer.find(END)
                if end < 0:
                    if len(buffer) > MAX_MESSAGE_BYTES:
                        return
                    try:
                        chunk = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        return
                    buffer += chunk
                    continue
                block, buffer = buffer[:end], buffer[end + len(END):]
                start = block.find(START)
                if start >= 0 and not self._answer(conn, block[start + 1:]):
                    return
        except (OSError, ssl.SSLError):
            return  # the client hung up, or refused our certificate
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _answer(self, conn: socket.socket, content: bytes) -> bool:
        """Record one message and answer it as scripted; False: leave the connection."""
        text = content.decode("utf-8", "replace")
        with self._lock:
            answer = self.answers.pop(0) if self.answers else self.default
        got = Received(text, control_id_of(text), time.time(), answer)
        with self._lock:
            self.received.append(got)
        if self.on_message is not None:
            self.on_message(got)
        if answer.code in ACCEPTED:  # taken, whatever happens to the answer after
            with self._lock:
                if not self.dedupe or got.control_id not in {f.control_id for f in self.filed}:
                    self.filed.append(got)
        if answer.drop:
            return False
        if answer.silent:
            self.stopped.wait()
            return False
        if answer.delay:
            self.stopped.wait(answer.delay)
        conn.sendall(START + self.ack(text, answer).encode("utf-8") + END)
        return True

    def ack(self, text: str, answer: Answer) -> str:
        """The acknowledgement (python-hl7's create_ack), MSA-3 the answer's text."""
        import hl7

        with self._lock:
            self._acks += 1
            ack_id = f"ACK{self._acks:06d}"
        try:
            msg = hl7.parse(text)
            ack = msg.create_ack(answer.code, message_id=ack_id, application="STAND-IN",
                                 facility="ENGINE")
        except Exception:  # not HL7: what an engine answers to garbage
            return (f"MSH|^~\\&|STAND-IN|ENGINE|||{time.strftime('%Y%m%d%H%M%S')}||ACK|"
                    f"{ack_id}|P|2.5\rMSA|AR||not an HL7 message\r")
        msa = ack.segment("MSA")
        if answer.wrong_control_id:
            msa[2] = ack.create_field(["NOT-" + control_id_of(text)[:16]])
        if answer.text:
            msa.append(ack.create_field([hl7.util.escape(ack, answer.text)]))
        return str(ack).rstrip("\r") + "\r" + (f"ERR{answer.err}\r" if answer.err else "")

    # ---------------------------------------------------------------- use

    def settings(self, **extra: Any) -> dict[str, Any]:
        """The hl7v2 action's host and port for this listener."""
        return {"host": self.host, "port": self.port, **extra}

    def stop(self) -> None:
        self.stopped.set()
        self._thread.join(5)


def control_id_of(text: str) -> str:
    """MSH-10 of a message, or "" if it has none."""
    head = text.split("\r", 1)[0]
    if not head.startswith("MSH") or len(head) < 4:
        return ""
    fields = head.split(head[3])
    return fields[9] if len(fields) > 9 else ""
