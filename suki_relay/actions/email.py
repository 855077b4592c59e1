"""``email``: a plain-text (and optionally HTML) alert over SMTP.

SMTP 4xx replies and connection failures are retried; 5xx replies (unknown recipient,
authentication refused) are permanent and say which. A rendered address or header with a
line break or other control character is permanent (it could only add headers or
recipients, and renders the same on every retry). A login needs ssl or starttls, unless
``allow_plaintext_login`` says the password may cross the network in clear.

``timeout_seconds`` bounds the exchange, greeting to QUIT, not each read: a server that
drips its replies is cut off when the time is up (the outbound deadline watchdog shuts
the connection down), and the attempt is retried. The TLS handshakes (``ssl``,
``starttls``) are bounded per read only: the socket is wrapped while they run.
"""

from __future__ import annotations

import email.errors
import re
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from suki_relay.plugin import Action, Delivery, Option, PermanentError, RetryableError, deadline

SMTP_KEYS: dict[str, type | tuple[type, ...]] = {
    "host": str, "port": int, "username": str, "password": str, "starttls": bool,
    "ssl": bool, "timeout_seconds": (int, float), "allow_plaintext_login": bool}
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


class EmailAction(Action):
    description = "send an email alert over SMTP"
    options = {
        "to": Option((list, str), required=True, help="recipient address or list"),
        "cc": Option((list, str), default=[], help="copy to: an address or a list"),
        "bcc": Option((list, str), default=[], help="blind copy to: never in the headers"),
        "from": Option(str, default="suki-relay@localhost", help="the sender address"),
        "reply_to": Option(str, help="the Reply-To address"),
        "subject": Option(str, default="Suki session {{ event.status }}: {{ event.session_id }}",
                          help="the subject; line breaks fold to spaces"),
        "body": Option(str, default="Suki session {{ event.session_id }} (encounter "
                                    "{{ event.encounter_id }}): {{ event.status }}\n",
                       help="the plain-text body"),
        "html": Option(str, html=True, help="HTML alternative, autoescaped"),
        "smtp": Option(dict, default={}, template=False,
                       help="host, port, username, password, starttls, ssl, timeout_seconds"),
    }

    def check(self) -> list[str]:
        problems = []
        smtp = self.values["smtp"]
        for key, value in smtp.items():
            want = SMTP_KEYS.get(key)
            if want is None:
                problems.append(f"smtp.{key}: unknown; expected one of {', '.join(SMTP_KEYS)}")
            elif not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
                problems.append(f"smtp.{key}: wrong type {type(value).__name__}")
        if smtp.get("ssl") and smtp.get("starttls"):
            problems.append("smtp: choose ssl or starttls, not both")
        if bool(smtp.get("username")) != bool(smtp.get("password")):
            problems.append("smtp: username and password go together")
        if (smtp.get("username") and not smtp.get("ssl") and not smtp.get("starttls")
                and not smtp.get("allow_plaintext_login")):
            problems.append("smtp: a login without ssl or starttls sends the password in clear; "
                            "set ssl: true or starttls: true (or allow_plaintext_login: true "
                            "for a server on this machine)")
        return problems

    def message(self, delivery: Delivery) -> tuple[EmailMessage, list[str]]:
        def header(option: str) -> str:
            value = str(self.render(option, delivery))
            if _CONTROL.search(value):
                raise PermanentError(f"{option}: the rendered value has a line break or control "
                                     "character")
            return value

        def addresses(option: str) -> list[str]:
            value = self.render(option, delivery)
            found = [value] if isinstance(value, str) else [str(v) for v in value]
            if any(_CONTROL.search(a) for a in found):
                raise PermanentError(f"{option}: a rendered address has a line break or control "
                                     "character")
            return found

        msg = EmailMessage()
        to, cc, bcc = addresses("to"), addresses("cc"), addresses("bcc")
        try:
            msg["From"] = header("from")
            msg["To"] = ", ".join(to)
            if cc:
                msg["Cc"] = ", ".join(cc)
            if self.values["reply_to"]:
                msg["Reply-To"] = header("reply_to")
            msg["Subject"] = " ".join(self.render("subject", delivery).split())
            msg["Date"] = formatdate(localtime=False)
            msg["Message-ID"] = make_msgid(idstring=delivery.id.replace("_", ""),
                                           domain="suki-relay")
        except (ValueError, email.errors.MessageError) as exc:  # the same on every retry
            raise PermanentError(f"a rendered header is not valid ({type(exc).__name__})") from None
        msg.set_content(self.render("body", delivery), charset="utf-8")
        if self.values["html"] is not None:
            msg.add_alternative(self.render("html", delivery), subtype="html", charset="utf-8")
        return msg, to + cc + bcc

    def deliver(self, delivery: Delivery) -> str | None:
        msg, recipients = self.message(delivery)
        smtp = self.values["smtp"]
        host, timeout = smtp.get("host", "localhost"), float(smtp.get("timeout_seconds", 30))
        port = smtp.get("port", 465 if smtp.get("ssl") else 25)
        with deadline.bounded(timeout) as attempt:
            try:
                if smtp.get("ssl"):
                    client: smtplib.SMTP = _SMTP_SSL(attempt, host, port, timeout=timeout,
                                                     context=ssl.create_default_context())
                else:
                    client = _SMTP(attempt, host, port, timeout=timeout)
                with client:
                    if smtp.get("starttls"):
                        client.starttls(context=ssl.create_default_context())
                    if smtp.get("username"):
                        client.login(smtp["username"], smtp["password"])
                    refused = client.send_message(msg, to_addrs=recipients)
            except (TimeoutError, smtplib.SMTPException, OSError) as exc:
                if attempt.expired:  # first: a reply cut off mid-line parses as a made-up code
                    raise RetryableError(f"SMTP: not done within {timeout:g}s") from None
                if isinstance(exc, smtplib.SMTPRecipientsRefused):
                    raise _smtp_error("every recipient refused",
                                      _worst(exc.recipients)) from None
                if isinstance(exc, smtplib.SMTPAuthenticationError):
                    raise _smtp_error("authentication refused", exc.smtp_code) from None
                if isinstance(exc, smtplib.SMTPResponseException):
                    raise _smtp_error("server refused the message", exc.smtp_code) from None
                raise RetryableError(f"SMTP connection failed ({type(exc).__name__})") from None
        if refused:
            return f"sent; {len(refused)} recipient(s) refused"
        return f"sent to {len(recipients)} recipient(s)"

    def preview(self, delivery: Delivery) -> dict[str, Any]:
        msg, recipients = self.message(delivery)
        shown: dict[str, Any] = {k: v for k, v in msg.items() if k in ("From", "To", "Cc",
                                                                         "Subject")}
        shown["recipients"] = recipients
        shown["body"] = self.render("body", delivery)
        if self.values["html"] is not None:
            shown["html"] = self.render("html", delivery)
        shown["smtp"] = {k: "***" if k == "password" else v for k, v in self.values["smtp"].items()}
        return shown


def _worst(recipients: dict[str, tuple[int, bytes]]) -> int:
    codes = [code for code, _ in recipients.values()]
    return max(codes) if codes else 550


class _InDeadline:
    """smtplib's client with its connection in the delivery's deadline from the moment
    the socket exists (before the greeting is read; for ``ssl``, once the handshake is
    done). At expiry the client's current ``sock`` is shut down: after STARTTLS, the
    TLS socket (during that handshake the old one, detached: not cut off)."""

    sock: Any

    def __init__(self, attempt: deadline.Attempt, *args: Any, **kwargs: Any):
        self.attempt = attempt
        super().__init__(*args, **kwargs)  # connects, when given a host

    def _get_socket(self, host: str, port: int, timeout: float) -> Any:
        self.sock = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self.attempt.add(self)
        return self.sock


class _SMTP(_InDeadline, smtplib.SMTP):
    pass


class _SMTP_SSL(_InDeadline, smtplib.SMTP_SSL):
    pass


def _smtp_error(what: str, code: int) -> Exception:
    if 400 <= code < 500:
        return RetryableError(f"SMTP {code}: {what} (temporary)", status=code)
    return PermanentError(f"SMTP {code}: {what}", status=code)
