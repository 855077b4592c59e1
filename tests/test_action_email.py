"""The email action against a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from suki_relay.config.check import sample
from suki_relay.errors import ConfigError, PermanentError, RetryableError
from suki_relay.testing import build_action, free_port, make_delivery
from suki_relay.testing_servers import RawServer


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), msg))  # type: ignore[arg-type]
        return "250 Message accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[Recorder, int]]:
    handler = Recorder()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def alert(port: int, tmp_path: Path, **options: Any):  # type: ignore[no-untyped-def]
    return build_action("email", {
        "to": ["oncall@clinic.example"], "cc": "lead@clinic.example",
        "bcc": ["audit@clinic.example"], "from": "relay@clinic.example",
        "subject": "Suki {{ event.status }}: {{ event.error_code }}",
        "body": "Session {{ event.session_id }} failed: {{ event.error_code }}\n",
        "smtp": {"host": "127.0.0.1", "port": port, "timeout_seconds": 5}, **options,
    }, tmp_path)


def test_sends_a_proper_message(smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    handler, port = smtp
    action = alert(port, tmp_path,
                   html="<p>Session <b>{{ event.session_id }}</b>: {{ event.error_detail }}</p>")
    delivery = make_delivery({"status": "failure", "session_id": "s-1", "encounter_id": "e-1",
                              "error_code": "E_X", "error_detail": "<script>café</script>",
                              "transcript": "PATIENT SAID SOMETHING PRIVATE"})
    assert action.deliver(delivery) == "sent to 3 recipient(s)"
    (rcpts, msg), = handler.messages
    assert sorted(rcpts) == ["audit@clinic.example", "lead@clinic.example",
                             "oncall@clinic.example"]
    assert msg["To"] == "oncall@clinic.example" and msg["Cc"] == "lead@clinic.example"
    assert "Bcc" not in msg
    assert msg["Subject"] == "Suki failure: E_X"
    assert msg["Message-ID"] and msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    plain = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert plain.replace("\r\n", "\n") == "Session s-1 failed: E_X\n"
    assert "&lt;script&gt;café&lt;/script&gt;" in html  # autoescaped, UTF-8 intact
    raw = msg.as_string()
    assert "PATIENT SAID" not in raw  # only what the templates put there


def test_plain_text_only_without_html(smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    handler, port = smtp
    alert(port, tmp_path).deliver(make_delivery("failure"))
    (_, msg), = handler.messages
    assert msg.get_content_type() == "text/plain"


@pytest.mark.parametrize("reply, error, fragment", [
    ("450 mailbox busy", RetryableError, "SMTP 450"),
    ("550 no such user", PermanentError, "SMTP 550"),
])
def test_smtp_replies_decide_retry(smtp, tmp_path: Path, reply: str, error: type,
                                   fragment: str) -> None:  # type: ignore[no-untyped-def]
    handler, port = smtp
    handler.rcpt_reply = reply
    with pytest.raises(error, match=fragment):
        alert(port, tmp_path).deliver(make_delivery("failure"))


def test_no_server_is_retryable(tmp_path: Path) -> None:
    with pytest.raises(RetryableError, match="connection failed"):
        alert(free_port(), tmp_path).deliver(make_delivery("failure"))


def _dripping_smtp(stage: bytes):  # type: ignore[no-untyped-def]
    """A RawServer script for an SMTP server that answers normally up to ``stage``
    (b"" for the greeting itself, b"DATA" for the end of the message), then sends
    continuation lines ("250-...") every 0.1 s forever: every read gets something well
    inside a per-read timeout, and the reply never ends."""

    def script(sock: socket.socket, head: bytes, stopped: threading.Event) -> None:
        def drip() -> None:
            while not stopped.wait(0.1):
                sock.sendall(b"250-still thinking\r\n")

        if stage == b"bytes":  # a greeting a byte at a time: cut off mid-line
            for byte in b"220 relay.example ESMTP\r\n":
                if stopped.wait(0.4):
                    return
                sock.sendall(bytes([byte]))
            return drip()
        if not stage:
            sock.sendall(b"220-relay.example ESMTP\r\n")
            return drip()
        sock.sendall(b"220 relay.example ESMTP\r\n")
        buffered, in_data = b"", False
        while not stopped.is_set():
            data = sock.recv(65536)
            if not data:
                return
            buffered += data
            while True:
                if in_data:
                    if b"\r\n.\r\n" not in buffered:
                        break
                    return drip()  # the message is in: its reply never ends
                line, sep, buffered = buffered.partition(b"\r\n")
                if not sep:
                    buffered = line
                    break
                verb = line[:4].upper()
                if verb == b"DATA":
                    in_data = True
                    sock.sendall(b"354 go ahead\r\n")
                elif verb == b"QUIT":
                    return
                else:
                    sock.sendall(b"250 ok\r\n")

    return script


@pytest.mark.parametrize("stage", [b"", b"bytes", b"DATA"],
                         ids=["greeting", "greeting-bytewise", "after-data"])
def test_a_server_that_never_finishes_is_cut_off_at_the_deadline(
        tmp_path: Path, stage: bytes) -> None:
    """timeout_seconds bounds the whole exchange: a server dripping a reply that never
    ends (a line every 0.1 s, far inside a per-read timeout) frees the delivery once the
    time is up, as a retry; without the deadline it holds it until the server gives up.
    A reply cut off mid-line ("22") is a retry too, never read as a permanent SMTP code."""
    with RawServer(_dripping_smtp(stage), lifetime=30, speaks_first=True) as server:
        port = int(server.url.rsplit(":", 1)[1])
        action = alert(port, tmp_path, smtp={"host": "127.0.0.1", "port": port,
                                              "timeout_seconds": 1})
        started = time.monotonic()
        with pytest.raises(RetryableError, match=r"SMTP: not done within 1s"):
            action.deliver(make_delivery("failure"))
        assert time.monotonic() - started < 20, "held until the server stopped"
        assert server.requests == 1


def test_smtp_options_are_checked(tmp_path: Path) -> None:
    from suki_relay.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        build_action("email", {"to": "a@b", "smtp": {"hots": "x", "ssl": True,
                                                     "starttls": True}}, tmp_path)
    text = str(info.value)
    assert "smtp.hots: unknown" in text and "ssl or starttls" in text


@pytest.mark.parametrize("option, template", [
    ("to", "{{ event.error_code }}@clinic.example"),
    ("cc", ["{{ event.error_code }}@clinic.example"]),
    ("bcc", "{{ event.error_code }}@clinic.example"),
    ("from", "{{ event.error_code }}@clinic.example"),
    ("reply_to", "{{ event.error_code }}@clinic.example"),
])
@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"])
def test_a_line_break_in_a_rendered_address_or_header_is_permanent(
        smtp, tmp_path: Path, option: str, template: Any, newline: str) -> None:  # type: ignore[no-untyped-def]
    """Payload text that would add a header or a recipient fails for good (it renders the
    same on every retry), names no payload value, and sends nothing."""
    handler, port = smtp
    event = json.loads(sample("failure"))
    event["error_code"] = f"x{newline}Bcc: PHI-evil@attacker.example"
    with pytest.raises(PermanentError, match="line break") as info:
        alert(port, tmp_path, **{option: template}).deliver(make_delivery(event))
    assert "PHI" not in str(info.value) and "attacker" not in str(info.value)
    assert handler.messages == []


def test_a_login_in_clear_fails_check_unless_allowed(smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, port = smtp
    login = {"host": "127.0.0.1", "port": port, "username": "relay", "password": "pw"}
    with pytest.raises(ConfigError, match="sends the password in clear"):
        build_action("email", {"to": "a@b", "smtp": login}, tmp_path)
    for safe in ({"starttls": True}, {"ssl": True}, {"allow_plaintext_login": True}):
        build_action("email", {"to": "a@b", "smtp": {**login, **safe}}, tmp_path)
