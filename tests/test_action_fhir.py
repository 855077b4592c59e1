"""The fhir action against local stand-ins for Suki's API and a FHIR server."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from suki_relay.deliver.fetch import note_text
from suki_relay.errors import ConfigError, PermanentError, RetryableError
from suki_relay.testing import (
    NOTE,
    Reply,
    SukiStandIn,
    attempt_once,
    build_spec,
    make_delivery,
    unique_body,
    wait_until,
)

from .conftest import check_fails, run_cli, success_event
from .fhir_standin import CLIENT_SECRET, FhirStandIn, outcome

PATIENT = "pat-42"


@pytest.fixture
def ehr() -> Iterator[FhirStandIn]:
    server = FhirStandIn()
    yield server
    server.stop()


def event(**fields: Any) -> dict[str, Any]:
    return success_event(PATIENT, **fields)


def filer(tmp_path: Path, suki: SukiStandIn, ehr: FhirStandIn, **options: Any):  # type: ignore[no-untyped-def]
    return build_spec("fhir", {
        "base_url": ehr.base_url,
        "subject": "Patient/{{ event.additional_info.patient_id }}",
        "auth": ehr.oauth(),
        **options,
    }, tmp_path, suki=suki.settings())


def posted(ehr: FhirStandIn, i: int = -1) -> dict[str, Any]:
    return json.loads(ehr.posts[i].body)


def test_files_the_note_as_a_valid_r4_document_reference(tmp_path: Path, suki: SukiStandIn,
                                                         ehr: FhirStandIn) -> None:
    spec = filer(tmp_path, suki, ehr, encounter="Encounter/{{ event.encounter_id }}",
                 author="Practitioner/dr-7", attach_json=True)
    delivery = make_delivery(event())
    assert attempt_once(spec, delivery) == "created DocumentReference/1"
    assert ehr.invalid == []
    doc = ehr.documents["1"]
    session = delivery.event["session_id"]
    assert doc["resourceType"] == "DocumentReference"
    assert doc["status"] == "current" and doc["docStatus"] == "final"
    assert doc["type"]["coding"] == [{"system": "http://loinc.org", "code": "11506-3",
                                      "display": "Progress note"}]
    assert doc["subject"] == {"reference": f"Patient/{PATIENT}"}
    assert doc["context"] == {"encounter": [{"reference":
                                             f"Encounter/{delivery.event['encounter_id']}"}]}
    assert doc["author"] == [{"reference": "Practitioner/dr-7"}]
    assert doc["date"] == delivery.received_at
    assert doc["identifier"] == [{"system": "urn:suki:session-id", "value": session}]
    text, raw = (c["attachment"] for c in doc["content"])
    assert text["contentType"] == "text/plain; charset=utf-8"
    assert text["title"] == "Progress note"
    assert base64.b64decode(text["data"]).decode() == note_text(NOTE)
    assert base64.b64decode(text["data"]).decode().startswith(
        "Assessment\nPHI-NOTE-TEXT stable angina\n\nPlan\n")
    assert raw["contentType"] == "application/json"
    assert json.loads(base64.b64decode(raw["data"])) == NOTE
    headers = ehr.posts[0].headers
    assert headers["Content-Type"] == "application/fhir+json"
    assert headers["If-None-Exist"] == f"identifier=urn:suki:session-id|{session}"
    assert headers["Authorization"] == "Bearer ACCESS-TOKEN-1-c0ffee"


def test_the_minimal_resource_validates_and_options_change_it(tmp_path: Path, suki: SukiStandIn,
                                                              ehr: FhirStandIn) -> None:
    spec = filer(tmp_path, suki, ehr, document_type={"code": "34109-9", "display": "Note"},
                 identifier_system="https://clinic.example.org/suki-session",
                 title="Visit {{ event.encounter_id[:8] }}", note="encounter_content")
    attempt_once(spec, make_delivery(event()))
    assert ehr.invalid == []
    doc = posted(ehr)
    assert doc["type"]["coding"][0]["code"] == "34109-9"
    assert doc["type"]["text"] == "Note"
    assert doc["identifier"][0]["system"] == "https://clinic.example.org/suki-session"
    assert doc["content"][0]["attachment"]["title"] == "Visit 29de56bc"
    assert len(doc["content"]) == 1 and "context" not in doc and "author" not in doc
    assert [g.path for g in suki.api_calls()] == [
        "/api/v1/ambient/session/20965414-929a-4f71-a3e5-b92bec07d086/content?cumulative=true"]


def test_a_retry_or_replay_never_files_a_second_document(tmp_path: Path, suki: SukiStandIn,
                                                         ehr: FhirStandIn) -> None:
    spec = filer(tmp_path, suki, ehr)
    assert attempt_once(spec, make_delivery(event())) == "created DocumentReference/1"
    assert attempt_once(spec, make_delivery(event())) == "already filed DocumentReference/1"
    assert list(ehr.documents) == ["1"]


def test_a_401_leads_to_exactly_one_token_refresh(tmp_path: Path, suki: SukiStandIn,
                                                  ehr: FhirStandIn) -> None:
    spec = filer(tmp_path, suki, ehr)
    attempt_once(spec, make_delivery(event(session_id="s-1")))
    attempt_once(spec, make_delivery(event(session_id="s-2")))
    assert len(ehr.token_requests) == 1  # cached across deliveries
    ehr.revoke_tokens()
    assert attempt_once(spec, make_delivery(event(session_id="s-3"))).startswith("created")
    assert len(ehr.token_requests) == 2 and ehr.unauthorized == 1
    tokens = [p.headers["Authorization"] for p in ehr.posts]
    assert tokens == ["Bearer ACCESS-TOKEN-1-c0ffee"] * 3 + ["Bearer ACCESS-TOKEN-2-c0ffee"]


def test_a_second_401_fails_for_good_after_one_refresh(tmp_path: Path, suki: SukiStandIn,
                                                       ehr: FhirStandIn) -> None:
    spec = filer(tmp_path, suki, ehr)
    ehr.scripted = [outcome(401, "login"), outcome(401, "login")]
    with pytest.raises(PermanentError, match=r"refused the credentials \(401\)") as info:
        attempt_once(spec, make_delivery(event()))
    assert len(ehr.token_requests) == 2 and len(ehr.posts) == 2
    assert "ACCESS-TOKEN" not in str(info.value) and CLIENT_SECRET not in str(info.value)


def test_the_token_is_refreshed_before_it_expires(tmp_path: Path, suki: SukiStandIn) -> None:
    ehr = FhirStandIn(token_lifetime=1.0)  # refreshed half a second before it runs out
    try:
        spec = filer(tmp_path, suki, ehr)
        attempt_once(spec, make_delivery(event(session_id="s-1")))
        time.sleep(1.0)  # past the refresh point (not a timing assertion: later is fine too)
        attempt_once(spec, make_delivery(event(session_id="s-2")))
        assert len(ehr.token_requests) == 2 and ehr.unauthorized == 0
    finally:
        ehr.stop()


def test_the_client_secret_goes_to_token_url_only(tmp_path: Path, suki: SukiStandIn,
                                                  ehr: FhirStandIn) -> None:
    spec = filer(tmp_path, suki, ehr)
    attempt_once(spec, make_delivery(event()))
    secret = CLIENT_SECRET.encode()
    assert ehr.token_requests and all(
        secret in base64.b64decode(t.headers["Authorization"][6:]) for t in ehr.token_requests)
    for got in [*ehr.posts, *suki.sink.received]:
        assert secret not in got.body and not any(CLIENT_SECRET in v for v in got.headers.values())
        assert "Basic" not in got.headers.get("Authorization", "")
    for got in suki.sink.received:  # the EHR's token goes to the EHR only
        assert "ACCESS-TOKEN" not in json.dumps(got.headers)
    # client_secret_post puts it in the form body instead, still only to token_url
    other = filer(tmp_path, suki, ehr, auth=ehr.oauth(client_auth="post", scope="other"))
    attempt_once(other, make_delivery(event(session_id="s-post")))
    assert secret in ehr.token_requests[-1].body


def test_a_bearer_token_is_sent_as_given_and_never_refreshed(tmp_path: Path, suki: SukiStandIn,
                                                             ehr: FhirStandIn) -> None:
    spec = filer(tmp_path, suki, ehr, auth={"bearer": "STATIC-TOKEN"})
    with pytest.raises(PermanentError, match="401"):
        attempt_once(spec, make_delivery(event()))
    assert [p.headers["Authorization"] for p in ehr.posts] == ["Bearer STATIC-TOKEN"]
    assert ehr.token_requests == []


@pytest.mark.parametrize("reply, error, says", [
    (outcome(412, "duplicate", "PHI-DIAGNOSTICS Patient Jane Doe"), PermanentError,
     "412: several documents already have this identifier; OperationOutcome issue codes: "
     "duplicate"),
    (outcome(422, "processing", "PHI-DIAGNOSTICS note text: stable angina"), PermanentError,
     "FHIR server answered 422: OperationOutcome issue codes: processing"),
    (Reply(400, b"PHI-DIAGNOSTICS not even json"), PermanentError, "FHIR server answered 400"),
    (outcome(403, "forbidden", "PHI-DIAGNOSTICS"), PermanentError,
     "refused the credentials (403): OperationOutcome issue codes: forbidden"),
    (Reply(429, b"{}", {"Retry-After": "7"}), RetryableError, "FHIR server answered 429"),
    (outcome(503, "transient", "PHI-DIAGNOSTICS"), RetryableError,
     "FHIR server answered 503: OperationOutcome issue codes: transient"),
    (Reply(302, b"", {"Location": "http://127.0.0.1:1/elsewhere"}), PermanentError,
     "redirects are not followed"),
])
def test_outcomes_name_only_the_issue_codes(tmp_path: Path, suki: SukiStandIn, ehr: FhirStandIn,
                                            reply: Reply, error: type, says: str) -> None:
    ehr.scripted = [reply]
    with pytest.raises(error) as info:
        attempt_once(filer(tmp_path, suki, ehr), make_delivery(event()))
    assert says in str(info.value)
    assert "PHI" not in str(info.value) and "stable angina" not in str(info.value)
    if reply.status == 429:
        assert info.value.retry_after == 7  # type: ignore[attr-defined]


@pytest.mark.parametrize("body", [
    {"resourceType": "OperationOutcome", "issue": [{"code": "jane-doe-has-angina"}]},
    {"resourceType": "OperationOutcome", "issue": [{"code": {"text": "x"}}, "junk", None]},
    {"resourceType": "OperationOutcome", "issue": "not a list"},
    {"resourceType": "Patient", "id": "jane-doe"},
    ["not", "an", "object"],
])
def test_a_hostile_answer_is_not_repeated(tmp_path: Path, suki: SukiStandIn, ehr: FhirStandIn,
                                          body: Any) -> None:
    ehr.scripted = [Reply(400, json.dumps(body).encode())]
    with pytest.raises(PermanentError) as info:
        attempt_once(filer(tmp_path, suki, ehr), make_delivery(event()))
    assert str(info.value) == "FHIR server answered 400"


@pytest.mark.parametrize("answer", [
    {"error": "invalid_client: Jane Doe"}, {"error": {"x": 1}}, ["invalid_client"], "oops"])
def test_a_hostile_token_error_is_not_repeated(tmp_path: Path, suki: SukiStandIn,
                                               sink, answer: Any) -> None:  # type: ignore[no-untyped-def]
    token = sink(default=Reply(401, json.dumps(answer).encode()))
    spec = build_spec("fhir", {"base_url": "http://127.0.0.1:1/fhir", "subject": "Patient/1",
                               "auth": {"token_url": token.url, "client_id": "c",
                                        "client_secret": "s"}}, tmp_path, suki=suki.settings())
    with pytest.raises(PermanentError) as info:
        attempt_once(spec, make_delivery(event()))
    assert str(info.value) == "OAuth2 token endpoint refused the client credentials (401)"


def test_a_timeout_is_retried(tmp_path: Path, suki: SukiStandIn, ehr: FhirStandIn) -> None:
    ehr.scripted = [Reply(201, b"{}", delay=3)]
    with pytest.raises(RetryableError, match="no answer within 1s"):
        attempt_once(filer(tmp_path, suki, ehr, timeout_seconds=1), make_delivery(event()))
    ehr.sink.release()


def test_a_refused_client_fails_for_good_and_names_only_the_error_code(
        tmp_path: Path, suki: SukiStandIn, ehr: FhirStandIn) -> None:
    spec = filer(tmp_path, suki, ehr, auth=ehr.oauth(client_secret="wrong-secret"))
    with pytest.raises(PermanentError) as info:
        attempt_once(spec, make_delivery(event()))
    assert str(info.value) == ("OAuth2 token endpoint refused the client credentials "
                               "(401 invalid_client)")
    assert ehr.posts == []


def test_an_event_without_a_patient_fails_at_render(tmp_path: Path, suki: SukiStandIn,
                                                    ehr: FhirStandIn) -> None:
    payload = event()
    del payload["additional_info"]["patient_id"]
    with pytest.raises(Exception, match="patient_id"):
        attempt_once(filer(tmp_path, suki, ehr), make_delivery(payload))
    assert ehr.posts == []


@pytest.mark.parametrize("options, message", [
    ({"subject": None}, "actions.under-test.subject: required option missing"),
    ({"auth": {"bearer": "x", "client_id": "y"}}, "auth: bearer takes no other keys"),
    ({"auth": {"token_url": "ftp://x", "client_id": "c"}}, "auth.client_secret: required"),
    ({"auth": {"token_url": "ftp://x", "client_id": "c", "client_secret": "s"}},
     "auth.token_url: expected an http:// or https:// URL"),
    ({"document_type": {"display": "x"}}, "document_type: expected {code: ..., display: ...}"),
    ({"base_url": "ehr.example.org"}, "base_url: expected an http:// or https:// URL"),
    ({"note": "transcripts"}, "note: expected one of ['contents', 'encounter_content']"),
])
def test_bad_options_are_config_errors(tmp_path: Path, suki: SukiStandIn, ehr: FhirStandIn,
                                       options: dict[str, Any], message: str) -> None:
    base = {"base_url": ehr.base_url, "subject": "Patient/1", "auth": ehr.oauth()}
    with pytest.raises(ConfigError, match=re_escape(message)):
        build_spec("fhir", {**base, **options}, tmp_path, suki=suki.settings())


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_check_needs_the_suki_section(tmp_path: Path) -> None:
    report = check_fails(tmp_path, """
receiver: {secret: s}
actions:
  file-note:
    type: fhir
    base_url: https://ehr.example.org/fhir/r4
    subject: "Patient/{{ event.additional_info.patient_id }}"
""")
    assert "actions.file-note: fetching contents needs the top-level `suki:` section" in report


def test_dry_run_shows_the_resource_and_the_fetch_without_fetching(
        tmp_path: Path, suki: SukiStandIn, ehr: FhirStandIn) -> None:
    (tmp_path / "actions.yaml").write_text(json.dumps({
        "receiver": {"secret": "s"},
        "suki": suki.settings(),
        "actions": {"file-note": {"type": "fhir", "base_url": ehr.base_url,
                                  "subject": "Patient/{{ event.session_id }}",
                                  "auth": ehr.oauth()}},
        "rules": [{"name": "notes", "when": {"status": "success"}, "do": ["file-note"]}],
    }))
    result = run_cli("routes", "test", "success", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = json.loads(result.stdout)["actions"][0]
    assert shown["fetch"] == {"contents": suki.url + "/api/v1/ambient/session/"
                              "20965414-929a-4f71-a3e5-b92bec07d086/content"}
    assert shown["sends"]["headers"]["Authorization"] == "***"
    assert shown["sends"]["resource"]["subject"] == {
        "reference": "Patient/20965414-929a-4f71-a3e5-b92bec07d086"}
    assert CLIENT_SECRET not in result.stdout
    assert suki.sink.received == [] and ehr.sink.received == []
    check = run_cli("check", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert suki.sink.received == [] and ehr.sink.received == []


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_lost_answer_is_retried_and_leaves_one_document(write_config, local_relay,  # type: ignore[no-untyped-def]
                                                          relay_log, suki: SukiStandIn,
                                                          ehr: FhirStandIn) -> None:
    """Through the relay's delivery threads: the server stores the document, then answers
    500; the retry finds it by If-None-Exist. A 401 on the next event costs one token
    refresh. The note, the client secret and the token reach no log record."""
    cfg = write_config({
        "suki": suki.settings(),
        "actions": {"file-note": {
            "type": "fhir", "base_url": ehr.base_url,
            "subject": "Patient/{{ event.additional_info.patient_id }}",
            "auth": ehr.oauth(),
            "retry": {"initial_seconds": 0.1, "max_seconds": 0.3, "max_attempts": 6}}},
        "rules": [{"name": "notes", "when": {"status": "success"}, "do": ["file-note"]}],
    })
    r = local_relay(cfg)
    ehr.lose_answers = 1
    body = unique_body("success", additional_info={"patient_id": PATIENT})
    first = r.accept(body)
    wait_until(lambda: [d.state for d in r.store.deliveries(event_id=first)] == ["done"],
               message="the retried create done")
    ehr.revoke_tokens()  # the next event meets a 401: one refresh
    second_body = unique_body("success", additional_info={"patient_id": PATIENT})
    second = r.accept(second_body)
    wait_until(lambda: [d.state for d in r.store.deliveries(event_id=second)] == ["done"],
               message="the second event filed")
    assert len(ehr.documents) == 2 and ehr.invalid == []
    sessions = [d["identifier"][0]["value"] for d in ehr.documents.values()]
    assert sessions == [json.loads(body)["session_id"], json.loads(second_body)["session_id"]]
    assert len(ehr.posts) == 4  # lost, then found by If-None-Exist; 401, then created ...
    assert len(ehr.token_requests) == 2 and ehr.unauthorized == 1  # ... after one refresh
    attempts = [[(a.outcome, a.error or a.note) for a in d.attempts]
                for e in (first, second) for d in r.store.event(e).deliveries]  # type: ignore[union-attr]
    assert attempts == [
        [("retry", "FHIR server answered 500: OperationOutcome issue codes: exception"),
         ("ok", "already filed DocumentReference/1")],
        [("ok", "created DocumentReference/2")]]
    logs = relay_log.text()
    assert "file-note" in logs
    for secret in ("PHI-NOTE", "stable angina", CLIENT_SECRET, "ACCESS-TOKEN", "pt-SECRET"):
        assert secret not in logs, f"{secret!r} in the relay's log output"
