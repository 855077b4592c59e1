"""The MDM^T02 the ``hl7v2`` action sends: built and validated with hl7apy (strict).

Values are escaped here, not by hl7apy, before they are handed to it: hl7apy leaves a
literal ``\\F\\`` in a note as it is (a receiver would read ``|``), and python-hl7's
escape writes non-ASCII characters as hex escapes that readers decode as Latin-1. Our
escape writes only the five sequences ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` (hl7apy keeps them as
they are) and sends every other character as UTF-8 (MSH-18 ``UNICODE UTF-8``), so what a
receiver unescapes is exactly what was written.

The note becomes one OBX per line (OBX-2 ``TX``, OBX-4 the line's number, OBX-5 the
line, OBX-11 ``F``). A line whose escaped text is longer than OBX-5 may be (199
characters: OBX-5's type varies, and strict validators read it as ST) is cut into
several OBX segments with the same OBX-4: a receiver joins the OBX-5 of consecutive
segments with the same OBX-4 as they are, and puts a line break between lines. Line
breaks (``\\r\\n``, ``\\r`` or ``\\n``) end a line; other control characters cannot travel
in a field (0x0B and 0x1C would even end the MLLP frame) and become U+FFFD.

A value that does not fit (hl7apy refuses it, or the message does not validate) is
:class:`Refused`, naming the segment and field, never the value.

hl7apy costs about 10 ms a segment, so it builds and validates the header segments and
one OBX, the one with the longest OBX-5; the others are that segment with OBX-1, OBX-4
and OBX-5 changed (a set id, a line number, and text escaped as the checked one and no
longer). A 300 KB note would otherwise take half a minute of a delivery thread.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
DEFAULT_VERSION = "2.5"
# OBX-5's type varies with OBX-2; strict validators (hl7apy) hold it to ST's 199 characters
OBX5_MAX = 199
CHARSET = "UNICODE UTF-8"
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}
_SPECIAL = re.compile(r"[\\|^&~\x00-\x08\x0a-\x1f\x7f]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FIELD = re.compile(r"\b([A-Z][A-Z0-9]{2})[._](\d{1,3})\b")
_SEGMENT = re.compile(r"\b(MSH|EVN|PID|PV1|TXA|OBX)\b")


def escape(text: str) -> str:
    """``text`` as one HL7 component: the delimiters and the escape character written as
    escape sequences, control characters (but tab) replaced by U+FFFD."""
    return _SPECIAL.sub(lambda m: _ESCAPES.get(m.group(), "\ufffd"), text)


def control_id(delivery_id: str) -> str:
    """MSH-10 for a delivery: the same for every attempt of it, in any process or node
    (a receiver de-duplicates by it), 20 characters (MSH-10's length before 2.6)."""
    return "SR" + hashlib.blake2b(delivery_id.encode(), digest_size=9).hexdigest().upper()


def obx_lines(note: str, limit: int = OBX5_MAX) -> Iterator[tuple[int, str]]:
    """(line number, escaped OBX-5 value) for each OBX: a line whose escaped text is
    longer than ``limit`` is cut into pieces, never inside an escape sequence."""
    for number, line in enumerate(_LINE_BREAK.split(note), 1):
        text = escape(line)
        at = 0
        while len(text) - at > limit:
            cut = at + limit
            last = text.rfind("\\", at, cut)  # backslashes come in pairs: \F\
            if last >= 0 and last + 3 > cut and text.count("\\", at, last) % 2 == 0:
                cut = last  # a sequence would straddle the cut: it starts the next piece
            yield number, text[at:cut]
            at = cut
        yield number, text[at:]


Components = str | Sequence[str]


def composite(value: Components) -> str:
    """A field of components (CX, XCN, CE, HD): each one escaped, joined by ``^``."""
    parts = [value] if isinstance(value, str) else list(value)
    text = "^".join(escape(str(p)) for p in parts)
    return text.rstrip("^")


class Refused(ValueError):
    """A value hl7apy would not take; ``field`` names where it went (``TXA-5``)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Fields:
    """Everything rendered for one message (plain text, not yet escaped)."""

    version: str
    control_id: str
    timestamp: str  # YYYYMMDDHHMMSS
    sending_application: Components
    sending_facility: Components
    receiving_application: Components
    receiving_facility: Components
    processing_id: str
    patient_id: Components  # PID-3
    patient_name: Components  # PID-5
    patient_class: str  # PV1-2
    visit_number: Components  # PV1-19
    document_type: str  # TXA-2
    provider: Components  # TXA-5
    originator: Components  # TXA-9
    document_number: str  # TXA-12
    completion_status: str  # TXA-17
    observation: Components  # OBX-3
    note: str


class _Builder:
    """Sets one field at a time, so a refused value names its field (never the value)."""

    def __init__(self, version: str):
        from hl7apy.consts import VALIDATION_LEVEL
        from hl7apy.core import Message

        self.version = version
        self.message = Message("MDM_T02", version=version,
                               validation_level=VALIDATION_LEVEL.STRICT)

    def put(self, segment: Any, name: str, field: int, er7: str) -> None:
        if not er7:
            return
        try:
            setattr(segment, f"{name.lower()}_{field}", er7)
        except Exception as exc:
            raise Refused(f"{name}-{field}", f"{name}-{field} refused by HL7 {self.version} "
                          f"validation ({type(exc).__name__})") from None

    def obx(self) -> Any:
        group = {"2.5": "MDM_T02_OBSERVATION", "2.5.1": "MDM_T02_OBXNTE_SUPPGRP"}.get(self.version)
        return self.message.add_group(group).obx if group else self.message.add_segment("OBX")


def build(fields: Fields) -> str:
    """The message as ER7 text (segments ended by carriage returns), validated (strict)."""
    b = _Builder(fields.version)
    msh, evn, pid, pv1, txa = (b.message.msh, b.message.evn, b.message.pid, b.message.pv1,
                               b.message.txa)
    b.put(msh, "MSH", 3, composite(fields.sending_application))
    b.put(msh, "MSH", 4, composite(fields.sending_facility))
    b.put(msh, "MSH", 5, composite(fields.receiving_application))
    b.put(msh, "MSH", 6, composite(fields.receiving_facility))
    b.put(msh, "MSH", 7, fields.timestamp)
    b.put(msh, "MSH", 9, "MDM^T02" + ("^MDM_T02" if fields.version != "2.3" else ""))
    b.put(msh, "MSH", 10, fields.control_id)
    b.put(msh, "MSH", 11, escape(fields.processing_id))
    b.put(msh, "MSH", 18, CHARSET)
    b.put(evn, "EVN", 1, "T02")
    b.put(evn, "EVN", 2, fields.timestamp)
    b.put(pid, "PID", 3, composite(fields.patient_id) or '""')
    b.put(pid, "PID", 5, composite(fields.patient_name) or '""')
    b.put(pv1, "PV1", 2, escape(fields.patient_class))
    b.put(pv1, "PV1", 19, composite(fields.visit_number))
    b.put(txa, "TXA", 1, "1")
    b.put(txa, "TXA", 2, escape(fields.document_type))
    b.put(txa, "TXA", 3, "TX")
    b.put(txa, "TXA", 4, fields.timestamp)
    b.put(txa, "TXA", 5, composite(fields.provider))
    b.put(txa, "TXA", 9, composite(fields.originator))
    b.put(txa, "TXA", 12, composite([fields.document_number]))
    b.put(txa, "TXA", 17, escape(fields.completion_status))
    pieces = list(obx_lines(fields.note))
    _, longest = max(pieces, key=lambda p: len(p[1]))
    obx = b.obx()  # the one hl7apy checks: the longest OBX-5 (every other is as long or less)
    b.put(obx, "OBX", 1, "1")
    b.put(obx, "OBX", 2, "TX")
    b.put(obx, "OBX", 3, composite(fields.observation))
    b.put(obx, "OBX", 4, "1")
    b.put(obx, "OBX", 5, longest)
    b.put(obx, "OBX", 11, "F")
    try:
        b.message.validate()
    except Exception as exc:  # hl7apy's messages name the element (and may quote a value)
        found = where(str(exc))
        raise Refused(found, f"the message does not validate as HL7 {fields.version}: "
                      f"{found} ({type(exc).__name__})") from None
    *head, checked = segments(str(b.message.to_er7()))
    row = checked.split("|")  # no value holds a | (escaped), so the fields split cleanly
    rows = []
    for n, (line, text) in enumerate(pieces, 1):
        row[1], row[4], row[5] = str(n), str(line), text
        rows.append("|".join(row))
    return "\r".join(head + rows) + "\r"


def where(message: str) -> str:
    """The segment and field named in a validator's message, and nothing else of it."""
    field = _FIELD.search(message)
    if field:
        return f"{field.group(1)}-{int(field.group(2))}"
    segment = _SEGMENT.search(message)
    return segment.group(1) if segment else "a segment or field"


def segments(er7: str) -> list[str]:
    """The message one segment a line (for `routes test`)."""
    return [s for s in er7.split("\r") if s]
