"""``hl7v2``: send the note as an HL7 v2 MDM^T02 over MLLP to an interface engine.

The note (the ``contents`` document, or ``encounter_content``) is fetched by the core like
any ``fetch:`` and built into an MDM^T02 (hl7v2_message.py: hl7apy builds and validates
it, strict) that is sent over MLLP (mllp.py), in TLS if asked, and the engine's
acknowledgement decides:

* MSA-1 ``AA`` or ``CA``: delivered; the attempt's note names our MSH-10 and the ACK's.
* ``AR`` or ``CR``: the engine refuses the message for good: failed (kept for replay).
* ``AE`` or ``CE``: retried (``on_application_error: retry``, the default) or failed.
* An ACK whose MSA-2 is not our MSH-10, one that does not parse, or none at all: retried.

Every attempt of one delivery sends the same MSH-10 (derived from the delivery's id), and
TXA-12 is the session id: when the connection drops after the engine took the message,
the retry is the same message again, which an engine that de-duplicates by MSH-10 (or
an EHR by the document number) files once. Errors name the ACK code and the HL7 error
codes and locations the engine gives (ERR-3 or ERR-1, ERR-2, MSA-6: table 0357's
numbers, a segment and a field number), never MSA-3 or any other text of the answer:
an engine's free text quotes what it refused ("no patient with MRN ..."), which is
protected health information, and an error reaches `show`, the console and the
``on_failure`` alerts. hl7apy and python-hl7 are imported only when an
``hl7v2`` action is configured (the ``hl7`` extra).
"""

from __future__ import annotations

import functools
import os
import re
import ssl
from typing import Any

from suki_relay.plugin import (
    CONTENT_RELATIONS,
    Action,
    Delivery,
    Option,
    PermanentError,
    RetryableError,
    note_text,
)

PATIENT_CLASSES = ("E", "I", "O", "P", "R", "B", "C", "N", "U")  # HL7 table 0004
COMPLETION = ("AU", "DI", "DO", "IN", "IP", "LA", "PA")  # table 0271
PROCESSING = ("P", "T", "D")  # table 0103
ACCEPTED, REJECTED, ERRORED = ("AA", "CA"), ("AR", "CR"), ("AE", "CE")
MAX_ERRORS = 3  # ERR segments described in an error
_HL7_ERROR = re.compile(r"\d{1,3}")  # table 0357 (100 segment sequence, 207 internal ...)
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_POSITION = re.compile(r"\d{1,3}")
_ACK_CODE = re.compile(r"[A-Z]{2}")  # MSA-1 shown in an error only if shaped as a code
_ACK_ID = re.compile(r"[A-Za-z0-9._\-]{1,40}")  # the ACK's MSH-10 shown only if an id
# the option behind a field hl7apy refuses: `check` reports it at that option's line
FIELD_OPTIONS = {"MSH-3": "sending_application", "MSH-4": "sending_facility",
                 "MSH-5": "receiving_application", "MSH-6": "receiving_facility",
                 "PID-3": "patient_id", "PID-5": "patient_name", "PV1-19": "visit_number",
                 "TXA-2": "document_type", "TXA-5": "provider", "TXA-9": "originator",
                 "OBX-3": "observation_id"}
_HOST = re.compile(r"[A-Za-z0-9_.\-]+|[0-9A-Fa-f:.]+")  # a name, IPv4 or IPv6
EXTRA = "the hl7v2 action needs hl7apy and python-hl7: pip install 'suki-relay[hl7]'"


def _version(value: Any) -> str | None:
    from suki_relay.actions.hl7v2_message import VERSIONS

    if str(value) not in VERSIONS:
        return f"expected one of {list(VERSIONS)} (quote it: \"2.5\")"
    return None


def _components(value: Any) -> str | None:
    parts = value if isinstance(value, list) else [value]
    if not all(isinstance(p, str | int | float) and not isinstance(p, bool) for p in parts):
        return "expected a string, or a list of components (strings)"
    return None


def _host(value: Any) -> str | None:
    if not _HOST.fullmatch(str(value)):
        return "expected a host name or IP address only (no scheme, port or path; the port is `port`)"
    return None


def _code(value: Any) -> str | None:
    text = str(value)
    if not text or not text.isascii() or not text.replace("-", "").isalnum() or len(text) > 30:
        return "expected a code such as PR (letters and digits)"
    return None


def components(help: str, required: bool = False, default: Any = None) -> Option:
    """A field that is one template, or a list of component templates (CX, XCN, HD...)."""
    return Option((str, list), required=required, default=default, check=_components,
                  help=help)


class Hl7v2Action(Action):
    description = "send the note as an HL7 v2 MDM^T02 over MLLP (interface engines)"
    options = {
        "host": Option(str, required=True, template=False, check=_host,
                       help="the engine's MLLP listener"),
        "port": Option(int, required=True, template=False, min=1, max=65535,
                       help="the engine's MLLP port"),
        "version": Option((str, float), default="2.5", template=False, check=_version,
                          convert=str, help="HL7 version: 2.3, 2.3.1, 2.4, 2.5 or 2.5.1"),
        "sending_application": components("MSH-3", default="SUKI-RELAY"),
        "sending_facility": components("MSH-4", default=""),
        "receiving_application": components("MSH-5", default=""),
        "receiving_facility": components("MSH-6", default=""),
        "processing_id": Option(str, default="P", choices=PROCESSING, template=False,
                                help="MSH-11: P production, T training, D debugging"),
        "patient_id": components("PID-3, e.g. [\"{{ event.additional_info.mrn }}\", \"\", "
                                 "\"\", HOSP, MR]", required=True),
        "allow_unknown_patient": Option(bool, default=False, template=False,
                                        help="send HL7 null in PID-3 when patient_id renders "
                                             "empty (the engine matches by PV1-19)"),
        "patient_name": components("PID-5 (family, given); default HL7 null", default=""),
        "patient_class": Option(str, default="O", choices=PATIENT_CLASSES, template=False,
                                help="PV1-2 (table 0004)"),
        "visit_number": components("PV1-19", default="{{ event.encounter_id }}"),
        "document_type": Option(str, default="PR", template=False, check=_code,
                                help="TXA-2 (table 0270: PR progress note, CN consultation...)"),
        "provider": components("TXA-5, e.g. [ID, FAMILY, GIVEN]", default=""),
        "originator": components("TXA-9; default: provider"),
        "completion_status": Option(str, default="AU", choices=COMPLETION, template=False,
                                    help="TXA-17 (table 0271)"),
        "observation_id": components("OBX-3", default=["11506-3", "Progress note", "LN"]),
        "note": Option(str, default="contents", choices=CONTENT_RELATIONS, template=False,
                       help="which Suki content document is the note"),
        "on_application_error": Option(str, default="retry", choices=("retry", "fail"),
                                       template=False, help="what an AE (CE) acknowledgement does"),
        "timeout_seconds": Option(float, default=30.0, positive=True, max=300, template=False,
                                  help="bounds connecting, sending and the acknowledgement"),
        "tls": Option(bool, default=False, template=False, help="MLLP over TLS"),
        "ca_file": Option(str, template=False, help="CA bundle the engine's certificate must "
                                                    "chain to (default: the system's)"),
        "cert_file": Option(str, template=False, help="client certificate (mutual TLS)"),
        "key_file": Option(str, template=False, help="its private key"),
    }

    # ---------------------------------------------------------------- config

    def check(self) -> list[str]:
        problems: list[str] = []
        try:
            import hl7  # noqa: F401
            import hl7apy  # noqa: F401
        except ImportError:
            return [EXTRA]
        v = self.values
        for key in ("ca_file", "cert_file", "key_file"):
            if v[key] is not None:
                if not v["tls"]:
                    problems.append(f"{key}: set only with tls: true")
                elif not os.access(self.path(key), os.R_OK):
                    problems.append(f"{key}: {v[key]}: not a readable file")
        if (v["cert_file"] is None) != (v["key_file"] is None):
            problems.append("cert_file and key_file go together (mutual TLS)")
        if v["tls"] and not problems:
            try:
                self.ssl_context  # noqa: B018 - loads the files
            except (OSError, ssl.SSLError) as exc:
                problems.append(f"tls: the certificate files cannot be used ({_reason(exc)})")
        return problems

    def fetches(self) -> tuple[str, ...]:
        return (self.values["note"],)

    def path(self, key: str) -> str:
        return str(self.relay.base_dir / os.path.expanduser(self.values[key]))

    @functools.cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """One per action, for its life (None without ``tls``)."""
        if not self.values["tls"]:
            return None
        context = ssl.create_default_context(cafile=self.path("ca_file")
                                             if self.values["ca_file"] else None)
        if self.values["cert_file"]:
            context.load_cert_chain(self.path("cert_file"), self.path("key_file"))
        return context

    # ---------------------------------------------------------------- the message

    def message(self, delivery: Delivery) -> tuple[str, str]:
        """(MSH-10, the message as ER7 text) for this delivery."""
        from suki_relay.actions import hl7v2_message as m

        event = delivery.event if isinstance(delivery.event, dict) else {}
        session = event.get("session_id")
        if not isinstance(session, str) or not session:
            raise PermanentError("the event has no session_id for TXA-12")
        patient = self.render("patient_id", delivery)
        if not _filled(patient) and not self.values["allow_unknown_patient"]:
            raise PermanentError("patient_id rendered empty (PID-3); set allow_unknown_patient: "
                                 "true to send it empty and let the engine match by PV1-19")
        provider = self.render("provider", delivery)
        originator = provider if self.values["originator"] is None else \
            self.render("originator", delivery)
        control = m.control_id(delivery.id)
        fields = m.Fields(
            version=self.values["version"], control_id=control,
            timestamp=_hl7_time(delivery.received_at),
            sending_application=self.render("sending_application", delivery),
            sending_facility=self.render("sending_facility", delivery),
            receiving_application=self.render("receiving_application", delivery),
            receiving_facility=self.render("receiving_facility", delivery),
            processing_id=self.values["processing_id"], patient_id=patient,
            patient_name=self.render("patient_name", delivery),
            patient_class=self.values["patient_class"],
            visit_number=self.render("visit_number", delivery),
            document_type=self.values["document_type"], provider=provider,
            originator=originator, document_number=session,
            completion_status=self.values["completion_status"],
            observation=self.render("observation_id", delivery),
            note=note_text(delivery.fetched[self.values["note"]], empty_ok=False))
        try:
            return control, m.build(fields)
        except m.Refused as exc:
            error = PermanentError(str(exc))
            error.option = FIELD_OPTIONS.get(exc.field)  # type: ignore[attr-defined]
            raise error from None

    # ---------------------------------------------------------------- sending

    def deliver(self, delivery: Delivery) -> str | None:
        from suki_relay.actions import mllp

        control, text = self.message(delivery)
        where = f"{self.values['host']}:{self.values['port']}"
        try:
            content = mllp.exchange(self.values["host"], self.values["port"], text.encode(),
                                    self.values["timeout_seconds"], self.ssl_context)
        except mllp.NotSent as exc:
            raise RetryableError(f"MLLP {where}: {exc}; not sent") from None
        except mllp.NoAnswer as exc:
            raise RetryableError(f"MLLP {where}: {exc}; the engine may have the message: "
                                 f"retried with the same control id {control}") from None
        return self.outcome(control, content)

    def outcome(self, control: str, content: bytes) -> str:
        """The attempt's note for an accepting ACK; otherwise the error to raise."""
        ack = parse_ack(content)
        if ack is None:
            raise RetryableError(f"the engine's answer is not an HL7 acknowledgement; retried "
                                 f"with the same control id {control}")
        code, said = ack["code"], f" ({ack['errors']})" if ack["errors"] else ""
        if ack["control_id"] != control:
            shown = code if _ACK_CODE.fullmatch(code) else "(no MSA-1)" if not code else \
                "with an unknown MSA-1"
            raise RetryableError(f"ACK {shown} for another message (MSA-2 is not our control "
                                 f"id {control}); retried with the same control id")
        if code in ACCEPTED:
            ack_id = ack["ack_id"] if _ACK_ID.fullmatch(ack["ack_id"]) else "(none)"
            return f"{code}: control id {control}, ACK control id {ack_id}"
        if code in REJECTED:
            raise PermanentError(f"ACK {code}: the engine rejected the message{said}")
        if code in ERRORED:
            if self.values["on_application_error"] == "fail":
                raise PermanentError(f"ACK {code}: the engine could not process the message{said}")
            raise RetryableError(f"ACK {code}: the engine could not process the message{said}; "
                                 f"retried with the same control id {control}")
        raise RetryableError(f"ACK with an unknown MSA-1 code{said}; retried with the same "
                             f"control id {control}")

    def preview(self, delivery: Delivery) -> dict[str, Any]:
        from suki_relay.actions.hl7v2_message import segments

        control, text = self.message(delivery)
        return {"to": f"mllp{'s' if self.values['tls'] else ''}://{self.values['host']}:"
                      f"{self.values['port']}",
                "control_id": control, "message": "\n".join(segments(text))}


def parse_ack(content: bytes) -> dict[str, str] | None:
    """MSA-1, MSA-2, the ACK's own MSH-10 and its HL7 error codes (:func:`_errors`), by
    python-hl7, or None if it is not an HL7 message with an MSA segment. MSA-3 and the
    other free text of the answer are not read."""
    import hl7

    # segments ended by CR, LF, CR LF or LF CR, blank lines between them: one CR each
    text = "\r".join(segment for segment in re.split(r"[\r\n]+", content.decode(
        "utf-8", "replace")) if segment.strip())
    try:
        msg = hl7.parse(text)
        msa = msg.segment("MSA")
        ack_id = str(msg.segment("MSH")(10)) if len(msg.segment("MSH")) > 10 else ""
        errors = _errors(msg, msa)
    except Exception:  # python-hl7 raises ParseException, KeyError, IndexError...
        return None

    def field(n: int) -> str:
        return msg.unescape(str(msa(n))) if len(msa) > n else ""

    return {"code": field(1).strip().upper(), "control_id": field(2).strip(),
            "ack_id": ack_id, "errors": errors}


def _errors(msg: Any, msa: Any) -> str:
    """What the ACK says went wrong, in codes only: "HL7 error 103 at PID-3" for each ERR
    segment (ERR-3, or ERR-1's code, from table 0357; the segment and field of ERR-2 or
    ERR-1) and MSA-6's code. Anything not shaped as a code or a position (a value of the
    message quoted where a code belongs) is left out."""
    rep, comp, sub = msg.separators[2], msg.separators[3], msg.separators[4]

    def part(segment: Any, n: int, i: int) -> str:
        """Component ``i`` of field ``n`` (its first repetition), as sent."""
        if len(segment) <= n:
            return ""
        pieces = str(segment(n)).split(rep)[0].split(comp)
        return pieces[i - 1].strip() if len(pieces) >= i else ""

    said: list[str] = []
    try:
        found = list(msg.segments("ERR"))[:MAX_ERRORS]
    except KeyError:
        found = []
    for err in found:
        code = part(err, 3, 1) or part(err, 1, 4).split(sub)[0].strip()
        where = (part(err, 2, 1), part(err, 2, 3)) if part(err, 2, 1) else \
            (part(err, 1, 1), part(err, 1, 3))
        words = [f"HL7 error {code}"] if _HL7_ERROR.fullmatch(code) else []
        if _SEGMENT_ID.fullmatch(where[0]):
            words.append(f"at {where[0]}-{int(where[1])}" if _POSITION.fullmatch(where[1])
                         else f"at {where[0]}")
        if words:
            said.append(" ".join(words))
    condition = part(msa, 6, 1)
    if _HL7_ERROR.fullmatch(condition):
        said.append(f"HL7 error {condition}")
    return "; ".join(dict.fromkeys(said))


def _filled(value: Any) -> bool:
    parts = value if isinstance(value, list) else [value]
    return any(str(p).strip() for p in parts)


def _hl7_time(iso: str) -> str:
    """2026-01-01T00:00:00.000Z as HL7's YYYYMMDDHHMMSS+0000 (UTC, as received)."""
    digits = "".join(c for c in iso[:19] if c.isdigit())
    return digits[:14] + "+0000"


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
