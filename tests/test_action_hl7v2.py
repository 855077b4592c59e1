"""The hl7v2 action against a real MLLP listener on 127.0.0.1 (suki_relay.testing_mllp)
that answers as real interface engines do, flaws included; every message it receives
must parse and validate with hl7apy (strict) and give back the note exactly."""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from suki_relay.deliver.fetch import note_text
from suki_relay.errors import ConfigError, PermanentError, RetryableError
from suki_relay.testing import (
    NOTE,
    SukiStandIn,
    attempt_once,
    build_spec,
    in_thread,
    make_delivery,
    unique_body,
    wait_until,
)

from .conftest import check_fails, cli_here, success_event
from .mllp_standin import VALIDATION_LEVEL, Answer, MllpStandIn, control_id_of, hl7, parse_message

MRN = "MRN-0042"
HOSTILE = "A|B^C~D&E\\F\\ \\X0D\\ \\.br\\ end\\"


@pytest.fixture
def engine() -> Iterator[MllpStandIn]:
    with MllpStandIn() as listener:
        yield listener


def event(**fields: Any) -> dict[str, Any]:
    return success_event(MRN, **fields)


def sender(tmp_path: Path, suki: SukiStandIn, engine: MllpStandIn, **options: Any):  # type: ignore[no-untyped-def]
    return build_spec("hl7v2", {
        **engine.settings(),
        "patient_id": ["{{ event.additional_info.patient_id }}", "", "", "HOSP", "MR"],
        "timeout_seconds": 5,
        **options,
    }, tmp_path, suki=suki.settings())


def strict(text: str, version: str = "2.5") -> Any:
    """The message as a receiver validating strictly sees it (raises if invalid)."""
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    message.validate()
    assert message.msh.msh_12.to_er7() == version
    return message


def unescaped_note(text: str) -> str:
    """The note as the docs tell a receiver to join it: OBX-5 unescaped; segments with the
    same OBX-4 joined as they are, a line break between lines."""
    msg = hl7.parse(text)
    lines: list[tuple[str, str]] = []
    for seg in msg.segments("OBX"):
        line, value = str(seg(4)), msg.unescape(str(seg(5)))
        if lines and lines[-1][0] == line:
            lines[-1] = (line, lines[-1][1] + value)
        else:
            lines.append((line, value))
    return "\n".join(v for _, v in lines)


def with_note(text: str) -> dict[str, Any]:
    return {"summary": [{"title": "", "content": text}]}


# ---------------------------------------------------------------- the message


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1"])
def test_an_aa_delivers_a_strictly_valid_mdm_t02(tmp_path: Path, suki: SukiStandIn,
                                                 engine: MllpStandIn, version: str) -> None:
    spec = sender(tmp_path, suki, engine, version=version, provider=["D123", "Doe", "Jane"],
                  sending_facility="CLINIC", receiving_application="EPIC",
                  receiving_facility="HOSP")
    delivery = make_delivery(event())
    note = attempt_once(spec, delivery)
    [got] = engine.received
    assert note == f"AA: control id {got.control_id}, ACK control id ACK000001"
    msg = strict(got.text, version)
    assert msg.msh.msh_9.to_er7().startswith("MDM^T02")
    assert msg.msh.msh_18.to_er7() == "UNICODE UTF-8"
    assert msg.pid.pid_3.to_er7() == f"{MRN}^^^HOSP^MR"
    assert msg.pv1.pv1_19.to_er7() == event()["encounter_id"]
    assert msg.txa.txa_12.to_er7() == event()["session_id"]
    assert msg.txa.txa_17.to_er7() == "AU"
    assert msg.txa.txa_5.to_er7() == msg.txa.txa_9.to_er7() == "D123^Doe^Jane"
    assert unescaped_note(got.text) == note_text(NOTE)
    assert "PHI-NOTE-TEXT" not in note


@pytest.mark.parametrize("text", [
    HOSTILE,
    "non-ASCII: é ü ß 中文 🩺 — “quotes”\nsecond line\n\nafter a blank line\ttab",
    "line one\nline two " + HOSTILE + "\n" + "x" * 70000 + "|^~&\\" * 3000,
])
def test_every_separator_and_long_lines_arrive_exactly(tmp_path: Path, suki: SukiStandIn,
                                                       engine: MllpStandIn, text: str) -> None:
    suki.content = with_note(text)
    attempt_once(sender(tmp_path, suki, engine), make_delivery(event()))
    [got] = engine.received
    strict(got.text)
    assert unescaped_note(got.text) == text
    assert "\x0b" not in got.text and "\x1c" not in got.text


def test_a_300_kb_note_is_one_valid_message(tmp_path: Path, suki: SukiStandIn,
                                            engine: MllpStandIn) -> None:
    """About 1600 OBX segments: hl7apy takes some 15 s to parse and validate them all."""
    text = "\n".join(f"{n:04d} Ölçü | " + "plain clinical words " * 30 for n in range(480))
    assert len(text.encode()) > 300_000
    suki.content = with_note(text)
    attempt_once(sender(tmp_path, suki, engine), make_delivery(event()))
    [got] = engine.received
    strict(got.text)
    assert unescaped_note(got.text) == text


@settings(max_examples=300, deadline=None)
@example("a" * 198 + "|")  # a sequence across the cut at 199
@example("a" * 197 + "|\\" * 90 + "\n" + "^" * 400)
@given(st.text(alphabet=st.one_of(st.sampled_from("|^~&\\\t a"),
                                  st.characters(blacklist_categories=("Cs",))), max_size=1500))
def test_any_text_escapes_and_splits_into_pieces_that_unescape_to_it(text: str) -> None:
    """Hostile text of any kind: every OBX-5 piece is at most 199 characters, holds no
    delimiter or frame byte unescaped, and the pieces unescape to the text exactly (line
    breaks made \\n, other controls U+FFFD)."""
    from suki_relay.actions.hl7v2_message import OBX5_MAX, obx_lines

    container = hl7.parse("MSH|^~\\&|A")
    lines: dict[int, str] = {}
    for line, piece in obx_lines(text):
        assert len(piece) <= OBX5_MAX
        assert not set(piece) & set("|^~&\r\n\x0b\x1c")
        assert piece.count("\\") % 2 == 0  # no escape sequence cut in two
        lines[line] = lines.get(line, "") + container.unescape(piece)
    expected = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "\ufffd",
                      re.sub(r"\r\n|\r", "\n", text).replace("\x0a", "\n"))
    assert "\n".join(lines[n] for n in sorted(lines)) == expected


def test_line_breaks_of_any_kind_end_a_line_and_controls_cannot_end_the_frame(
        tmp_path: Path, suki: SukiStandIn, engine: MllpStandIn) -> None:
    suki.content = with_note("a\r\nb\rc\nd\x0be\x1cf\x00g")
    attempt_once(sender(tmp_path, suki, engine), make_delivery(event()))
    [got] = engine.received
    strict(got.text)
    assert unescaped_note(got.text) == "a\nb\nc\nd\ufffde\ufffdf\ufffdg"


def test_every_attempt_of_a_delivery_sends_the_same_control_id(
        tmp_path: Path, suki: SukiStandIn, engine: MllpStandIn) -> None:
    spec = sender(tmp_path, suki, engine)
    attempt_once(spec, make_delivery(event(), attempt=1))
    attempt_once(spec, make_delivery(event(), attempt=2))
    other = make_delivery(event())
    other.id = "dlv_other"
    attempt_once(spec, other)
    ids = [r.control_id for r in engine.received]
    assert ids[0] == ids[1] != ids[2] and all(len(i) <= 20 for i in ids)
    assert engine.received[0].text == engine.received[1].text  # byte for byte


def test_an_unknown_patient_fails_unless_the_config_allows_it(
        tmp_path: Path, suki: SukiStandIn, engine: MllpStandIn) -> None:
    recovered = event()
    del recovered["additional_info"]
    options = {"patient_id": "{{ event.get('additional_info', {}).get('patient_id', '') }}"}
    with pytest.raises(PermanentError, match="patient_id rendered empty"):
        attempt_once(sender(tmp_path, suki, engine, **options), make_delivery(recovered))
    assert engine.received == []
    attempt_once(sender(tmp_path, suki, engine, allow_unknown_patient=True, **options),
                 make_delivery(recovered))
    msg = strict(engine.received[0].text)
    assert msg.pid.pid_3.to_er7() == '""'  # HL7's null: the engine matches by PV1-19
    assert msg.pv1.pv1_19.to_er7() == recovered["encounter_id"]


def test_a_value_hl7apy_refuses_fails_for_good_naming_the_field_only(
        tmp_path: Path, suki: SukiStandIn, engine: MllpStandIn) -> None:
    spec = sender(tmp_path, suki, engine, provider="PHI-SECRET-NAME" * 30)
    with pytest.raises(PermanentError) as caught:
        attempt_once(spec, make_delivery(event()))
    assert "TXA-5" in str(caught.value) and "PHI" not in str(caught.value)
    assert engine.received == []


def test_an_empty_note_is_never_sent(tmp_path: Path, suki: SukiStandIn,
                                     engine: MllpStandIn) -> None:
    suki.content = {"summary": [{"title": "Assessment", "content": ""}]}
    with pytest.raises(PermanentError, match="the note is empty"):
        attempt_once(sender(tmp_path, suki, engine), make_delivery(event()))
    assert engine.received == []


# ---------------------------------------------------------------- what the engine answers


@pytest.mark.parametrize("code", ["AA", "CA"])
def test_accepting_codes_deliver(tmp_path: Path, suki: SukiStandIn, code: str) -> None:
    with MllpStandIn(Answer(code)) as listener:
        assert attempt_once(sender(tmp_path, suki, listener),
                            make_delivery(event())).startswith(f"{code}: control id SR")


PHI_TEXT = "No patient PHI-MRN-0042 DOE^JANE"  # what engines put in MSA-3 and ERR-7/8


@pytest.mark.parametrize("code", ["AR", "CR"])
def test_a_reject_fails_for_good_naming_codes_never_the_engines_text(
        tmp_path: Path, suki: SukiStandIn, code: str) -> None:
    """An engine's free text quotes what it refused (an MRN, a name): the error, which
    `show`, the console and on_failure alerts repeat, names the ACK code and the HL7
    error codes and locations only."""
    err = f"||PID^1^3^1|204^Unknown key identifier^HL70357|E|||{PHI_TEXT}|{PHI_TEXT}"
    with MllpStandIn(Answer(code, text=PHI_TEXT, err=err)) as listener, \
            pytest.raises(PermanentError) as caught:
        attempt_once(sender(tmp_path, suki, listener), make_delivery(event()))
    assert str(caught.value) == (f"ACK {code}: the engine rejected the message (HL7 error "
                                 "204 at PID-3)")
    with MllpStandIn(Answer(code, text=PHI_TEXT)) as listener, \
            pytest.raises(PermanentError) as caught:  # no ERR: the code alone
        attempt_once(sender(tmp_path, suki, listener), make_delivery(event()))
    assert str(caught.value) == f"ACK {code}: the engine rejected the message"


@pytest.mark.parametrize("err, said", [
    ("|PID^1^3^103&Table value not found&HL70357", "HL7 error 103 at PID-3"),  # 2.3's ERR-1
    (f"|||{PHI_TEXT}^x^HL70357|E", ""),  # a value where a code belongs: left out
    ("|||207|E\rERR||PV1^1^19|101|E", "HL7 error 207; HL7 error 101 at PV1-19"),  # two
    (f"||{PHI_TEXT}^1^x|103", "HL7 error 103"),
])
def test_only_code_shaped_parts_of_an_err_segment_are_named(
        tmp_path: Path, suki: SukiStandIn, err: str, said: str) -> None:
    with MllpStandIn(Answer("AR", text=PHI_TEXT, err=err)) as listener, \
            pytest.raises(PermanentError) as caught:
        attempt_once(sender(tmp_path, suki, listener), make_delivery(event()))
    assert str(caught.value) == "ACK AR: the engine rejected the message" + (
        f" ({said})" if said else "")


@pytest.mark.parametrize("code", ["AE", "CE"])
def test_an_application_error_retries_or_fails_as_configured(
        tmp_path: Path, suki: SukiStandIn, code: str) -> None:
    with MllpStandIn(Answer(code, text=PHI_TEXT, err="|||207|E")) as listener:
        with pytest.raises(RetryableError, match=f"ACK {code}: .*\\(HL7 error 207\\); retried "
                                                 "with the same control id SR"):
            attempt_once(sender(tmp_path, suki, listener), make_delivery(event()))
        with pytest.raises(PermanentError, match=f"ACK {code}: .*\\(HL7 error 207\\)$"):
            attempt_once(sender(tmp_path, suki, listener, on_application_error="fail"),
                         make_delivery(event()))


@pytest.mark.parametrize("separator", ["\r\n", "\n", "\n\r", "\r\r", "\r \r\n"])
def test_an_ack_whose_segments_end_otherwise_is_read(tmp_path: Path, suki: SukiStandIn,
                                                     separator: str) -> None:
    """Segments ended by a line feed, CR LF, LF CR or with blank lines between them: the
    AA is read as an AA, not retried (an engine that does not de-duplicate would file the
    note again on every retry)."""

    class Spaced(MllpStandIn):
        def ack(self, text: str, answer: Answer) -> str:
            return super().ack(text, answer).replace("\r", separator)

    with Spaced(Answer("AA")) as listener:
        assert attempt_once(sender(tmp_path, suki, listener),
                            make_delivery(event())).startswith("AA: control id SR")


def test_an_ack_for_another_message_is_retried(tmp_path: Path, suki: SukiStandIn) -> None:
    with MllpStandIn(Answer(wrong_control_id=True)) as listener:
        with pytest.raises(RetryableError, match="MSA-2 is not our control id"):
            attempt_once(sender(tmp_path, suki, listener), make_delivery(event()))
        assert listener.filed != []  # it took the message: only the same id makes it safe


def test_a_listener_that_never_answers_is_cut_off_at_the_deadline(
        tmp_path: Path, suki: SukiStandIn) -> None:
    with MllpStandIn(Answer(silent=True)) as listener:
        spec = sender(tmp_path, suki, listener, timeout_seconds=1)
        started = time.monotonic()
        with pytest.raises(RetryableError, match="no acknowledgement within 1s; the engine "
                                                 "may have the message"):
            in_thread(lambda: attempt_once(spec, make_delivery(event())), wait=10)
        assert time.monotonic() - started < 5


def test_a_slow_ack_within_the_deadline_delivers(tmp_path: Path, suki: SukiStandIn) -> None:
    with MllpStandIn(Answer(delay=0.5)) as listener:
        assert attempt_once(sender(tmp_path, suki, listener, timeout_seconds=3),
                            make_delivery(event())).startswith("AA")


def test_an_ack_dripped_a_byte_at_a_time_is_cut_off(tmp_path: Path, suki: SukiStandIn) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"\x0bMSH|^~\\&|")
            while not stop.wait(0.05):
                try:
                    conn.sendall(b"x")
                except OSError:
                    return

    threading.Thread(target=drip, daemon=True).start()
    try:
        spec = build_spec("hl7v2", {"host": "127.0.0.1", "port": listener.getsockname()[1],
                                    "patient_id": "1", "timeout_seconds": 1}, tmp_path,
                          suki=suki.settings())
        with pytest.raises(RetryableError, match="no acknowledgement within 1s"):
            in_thread(lambda: attempt_once(spec, make_delivery(event())), wait=10)
    finally:
        stop.set()
        listener.close()


def test_an_answer_that_is_not_hl7_or_too_long_is_retried(tmp_path: Path,
                                                          suki: SukiStandIn) -> None:
    for answer in (b"\x0bHELLO\x1c\x0d", b"\x0b" + b"M" * 70000 + b"\x1c\x0d"):
        listener = socket.create_server(("127.0.0.1", 0))

        def reply(answer: bytes = answer, listener: socket.socket = listener) -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

        threading.Thread(target=reply, daemon=True).start()
        spec = build_spec("hl7v2", {"host": "127.0.0.1", "port": listener.getsockname()[1],
                                    "patient_id": "1", "timeout_seconds": 3}, tmp_path,
                          suki=suki.settings())
        with pytest.raises(RetryableError, match=r"not an HL7 acknowledgement|longer than 64 KiB"):
            in_thread(lambda spec=spec: attempt_once(spec, make_delivery(event())), wait=10)
        listener.close()


def test_an_ack_with_line_feeds_after_stray_bytes_is_understood(tmp_path: Path,
                                                                suki: SukiStandIn) -> None:
    """Some engines end segments with LF, or send a byte or two before the start block."""
    listener = socket.create_server(("127.0.0.1", 0))

    def reply() -> None:
        conn, _ = listener.accept()
        with conn:
            got = b""
            while not got.endswith(b"\x1c\x0d"):
                got += conn.recv(65536)
            control = control_id_of(got[1:-2].decode())
            conn.sendall(b"\r\n\x0bMSH|^~\\&|ENGINE|HOSP|||20260101||ACK^T02|E-77|P|2.5\n"
                         + f"MSA|AA|{control}|Filed\n".encode() + b"\x1c\x0d")

    threading.Thread(target=reply, daemon=True).start()
    try:
        spec = build_spec("hl7v2", {"host": "127.0.0.1", "port": listener.getsockname()[1],
                                    "patient_id": "1", "timeout_seconds": 5}, tmp_path,
                          suki=suki.settings())
        note = in_thread(lambda: attempt_once(spec, make_delivery(event())), wait=10)
        assert note.startswith("AA: control id SR") and note.endswith("ACK control id E-77")
    finally:
        listener.close()


def test_nothing_listening_is_retried_as_not_sent(tmp_path: Path, suki: SukiStandIn) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = build_spec("hl7v2", {"host": "127.0.0.1", "port": port, "patient_id": "1"},
                      tmp_path, suki=suki.settings())
    with pytest.raises(RetryableError, match=r"could not connect .*; not sent"):
        attempt_once(spec, make_delivery(event()))


def test_a_drop_after_the_engine_took_the_message_files_it_once(
        tmp_path: Path, suki: SukiStandIn) -> None:
    """The engine reads the message and the connection drops before its ACK: the retry
    sends the same message with the same MSH-10, which a de-duplicating engine files once
    and acknowledges."""
    with MllpStandIn(answers=[Answer(drop=True)], dedupe=True) as listener:
        spec = sender(tmp_path, suki, listener)
        delivery = make_delivery(event())
        with pytest.raises(RetryableError, match="the engine may have the message"):
            attempt_once(spec, delivery)
        assert len(listener.filed) == 1  # taken before the drop
        delivery.attempt = 2
        assert attempt_once(spec, delivery).startswith("AA")
        assert [r.control_id for r in listener.received] == [listener.received[0].control_id] * 2
        assert len(listener.filed) == 1


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def ca() -> Any:
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


def tls_listener(ca: Any, tmp_path: Path, mutual: bool = False,
                 name: str = "127.0.0.1") -> tuple[MllpStandIn, dict[str, Any]]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    if mutual:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("relay.example.org")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    return MllpStandIn(context=context), {"tls": True, "ca_file": "ca.pem"}


def test_tls_with_the_engine_certificate_verified(tmp_path: Path, suki: SukiStandIn,
                                                  ca: Any) -> None:
    listener, options = tls_listener(ca, tmp_path)
    with listener:
        assert attempt_once(sender(tmp_path, suki, listener, **options),
                            make_delivery(event())).startswith("AA")
        strict(listener.received[0].text)
        with pytest.raises(RetryableError, match="TLS handshake failed: the engine's "
                                                 "certificate was not accepted"):
            attempt_once(sender(tmp_path, suki, listener, tls=True), make_delivery(event()))


def test_tls_verifies_the_host_name(tmp_path: Path, suki: SukiStandIn, ca: Any) -> None:
    listener, options = tls_listener(ca, tmp_path, name="engine.other.example")
    with listener:
        with pytest.raises(RetryableError, match=r"certificate was not accepted .*mismatch"):
            attempt_once(sender(tmp_path, suki, listener, **options), make_delivery(event()))
        assert listener.received == []


def test_mutual_tls_needs_the_client_certificate(tmp_path: Path, suki: SukiStandIn,
                                                 ca: Any) -> None:
    listener, options = tls_listener(ca, tmp_path, mutual=True)
    with listener:
        with pytest.raises(RetryableError):
            attempt_once(sender(tmp_path, suki, listener, **options), make_delivery(event()))
        assert listener.received == []
        assert attempt_once(sender(tmp_path, suki, listener, cert_file="client.pem",
                                   key_file="client.key", **options),
                            make_delivery(event())).startswith("AA")
        assert len(listener.received) == 1


# ---------------------------------------------------------------- check and dry runs


@pytest.mark.parametrize(("options", "message"), [
    ({"version": "2.6"}, "version: expected one of ['2.3', '2.3.1', '2.4', '2.5', '2.5.1']"),
    ({"port": 0}, "port: expected at least 1"),
    ({"patient_class": "X"}, "patient_class: expected one of"),
    ({"completion_status": "XX"}, "completion_status: expected one of"),
    ({"on_application_error": "ignore"}, "on_application_error: expected one of"),
    ({"timeout_seconds": 0}, "timeout_seconds: expected a positive number"),
    ({"document_type": "P|R"}, "document_type: expected a code"),
    ({"ca_file": "ca.pem"}, "ca_file: set only with tls: true"),
    ({"tls": True, "ca_file": "missing.pem"}, "ca_file: missing.pem: not a readable file"),
    ({"tls": True, "cert_file": "ca.pem"}, "cert_file and key_file go together"),
    ({"tls": True, "cert_file": "ca.pem", "key_file": "ca.pem"},
     "tls: the certificate files cannot be used"),
    ({"patient_id": {"id": 1}}, "patient_id: expected a string or a list"),
    ({"provider": [["nested"]]}, "provider: expected a string, or a list of components"),
    ({"visit_number": "{{ event.encounter_id"}, "visit_number: template error"),
    ({"host": "mllp://engine.example.org:6661"}, "host: expected a host name or IP address"),
])
def test_bad_options_are_config_errors(tmp_path: Path, suki: SukiStandIn, engine: MllpStandIn,
                                       options: dict[str, Any], message: str) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(ConfigError) as caught:
        sender(tmp_path, suki, engine, **options)
    assert message in str(caught.value)


def test_check_names_the_file_and_line(tmp_path: Path) -> None:
    report = check_fails(tmp_path, """
receiver: {secret: s}
suki: {base_url: "https://sdp.suki.ai", partner_id: p, partner_token: t}
actions:
  to-engine:
    type: hl7v2
    host: engine.example.org
    port: 6661
    version: 2.7
    patient_id: "{{ event.additional_info.patient_id }}"
""")
    assert "actions.yaml:9: actions.to-engine.version: expected one of" in report


def test_check_renders_the_message_and_names_the_option_a_field_refuses(tmp_path: Path) -> None:
    report = check_fails(tmp_path, """
receiver: {secret: s}
suki: {base_url: "https://sdp.suki.ai", partner_id: p, partner_token: t}
actions:
  to-engine:
    type: hl7v2
    host: engine.example.org
    port: 6661
    patient_id: "{{ event.additional_info.patient_id }}"
    provider: "{{ event.session_id * 10 }}"
rules:
  - {name: notes, when: {status: success}, do: [to-engine]}
""")
    assert ("actions.yaml:10: actions.to-engine.provider: rendering against the success "
            "sample: PermanentError: TXA-5 refused by HL7 2.5 validation") in report
    assert "20965414" not in report  # the value itself is never repeated


def test_the_starter_example_builds_when_uncommented(tmp_path: Path, suki: SukiStandIn,
                                                    engine: MllpStandIn) -> None:
    starter = (Path(__file__).resolve().parents[1] / "actions.yaml").read_text()
    block = starter.split("  # note-to-engine:\n", 1)[1].split("\n\n", 1)[0]
    options = yaml.safe_load("\n".join(line.replace("  #   ", "", 1) for line in
                                       block.splitlines()))
    assert options["type"] == "hl7v2"
    del options["type"]
    spec = build_spec("hl7v2", {**options, **engine.settings()}, tmp_path, suki=suki.settings())
    assert attempt_once(spec, make_delivery(event())).startswith("AA")
    strict(engine.received[0].text)


def test_routes_test_prints_the_message_one_segment_a_line(tmp_path: Path, suki: SukiStandIn,
                                                           engine: MllpStandIn) -> None:
    (tmp_path / "actions.yaml").write_text(json.dumps({
        "receiver": {"secret": "s"},
        "suki": suki.settings(),
        "actions": {"to-engine": {"type": "hl7v2", **engine.settings(),
                                  "patient_id": "{{ event.additional_info.patient_id }}"}},
        "rules": [{"name": "notes", "when": {"status": "success"}, "do": ["to-engine"]}],
    }))
    result = cli_here("routes", "test", "success", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("message: MSH|"))
    assert lines[at + 1].startswith("EVN|T02|") and lines[at + 3].startswith("PV1|")
    assert any(line.startswith("OBX|1|TX|") for line in lines)
    assert "Dry run" in result.stdout  # the stand-in note, never fetched
    assert suki.sink.received == [] and engine.received == []
    assert cli_here("check", cwd=tmp_path).returncode == 0


# ---------------------------------------------------------------- through the relay


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_relay_retries_a_dropped_delivery_with_the_same_control_id(
        write_config, local_relay, relay_log, suki: SukiStandIn) -> None:  # type: ignore[no-untyped-def]
    """Through the delivery threads: the engine takes the message and the connection
    drops; the retry carries the same MSH-10, the de-duplicating engine files the note
    once, and `show` names the ACK. The note reaches no log record."""
    with MllpStandIn(answers=[Answer(drop=True), Answer("AE", text="Busy", err="|||206|E")],
                     dedupe=True,
                     default=Answer("AA")) as listener:
        cfg = write_config({
            "suki": suki.settings(),
            "actions": {"to-engine": {
                "type": "hl7v2", **listener.settings(), "timeout_seconds": 5,
                "patient_id": "{{ event.additional_info.patient_id }}",
                "retry": {"initial_seconds": 0.1, "max_seconds": 0.3, "max_attempts": 6}}},
            "rules": [{"name": "notes", "when": {"status": "success"}, "do": ["to-engine"]}],
        })
        r = local_relay(cfg)
        first = r.accept(unique_body("success", additional_info={"patient_id": MRN}))
        wait_until(lambda: [d.state for d in r.store.deliveries(event_id=first)] == ["done"],
                   message="the retried delivery done")
        ids = [m.control_id for m in listener.received]
        assert len(ids) == 3 and len(set(ids)) == 1
        assert len(listener.filed) == 1
        [detail] = r.store.event(first).deliveries  # type: ignore[union-attr]
        said = [(a.outcome, a.error or a.note) for a in detail.attempts]
        assert [s[0] for s in said] == ["retry", "retry", "ok"]
        assert "the engine may have the message" in said[0][1]
        assert said[1][1].startswith("ACK AE: the engine could not process the message (HL7 "
                                     "error 206)")
        assert said[2][1] == f"AA: control id {ids[0]}, ACK control id ACK000002"
        for message in listener.received:
            strict(message.text)
            assert unescaped_note(message.text) == note_text(NOTE)
        shown = cli_here("show", first, cwd=cfg.parent)
        assert "ACK AE" in shown.stdout and "HL7 error 206" in shown.stdout
        assert "Busy" not in shown.stdout
        assert f"AA: control id {ids[0]}, ACK control id ACK000002" in shown.stdout
    logs = relay_log.text()
    assert "to-engine" in logs
    for phi in ("PHI-NOTE", "stable angina", MRN):
        assert phi not in logs, f"{phi!r} in the relay's log output"


def test_the_stand_in_command_prints_what_it_receives_and_answers_as_told(
        tmp_path: Path, suki: SukiStandIn) -> None:
    import signal
    import subprocess
    import sys

    from suki_relay.testing import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "suki_relay.cli.main", "stand-in", "mllp",
                             "--port", str(port), "--ack", "AE", "--text", "Try later"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # started as `cmd &` in a shell starts it: with SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        spec = build_spec("hl7v2", {"host": "127.0.0.1", "port": port, "patient_id": "P-1",
                                    "timeout_seconds": 5}, tmp_path, suki=suki.settings())

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, message="the stand-in listening")
        with pytest.raises(RetryableError, match=r"ACK AE: the engine could not process the "
                                                 r"message; retried"):
            attempt_once(spec, make_delivery(event()))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError("the stand-in did not stop on SIGINT") from None
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("--- received control id SR") and "answering AE" in lines[0]
    assert lines[1].startswith("MSH|^~\\&|SUKI-RELAY|") and lines[2].startswith("EVN|T02|")
    assert "PHI-NOTE-TEXT stable angina" in out  # it shows what arrived: that is its point
    assert "received 1 message(s), filed 0" in err
