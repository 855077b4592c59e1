"""The fhir action against stand-ins that behave as Epic and Oracle Health do (no
conditional create, empty 201 bodies, strict validators, SMART Backend Services), and the
answer lost after the server stored the document: one document, or `unknown`, never two."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from suki_relay.actions import fhir_guard
from suki_relay.config.check import sample
from suki_relay.deliver import smart
from suki_relay.errors import ConfigError, InDoubtError, PermanentError, RetryableError
from suki_relay.testing import (
    Delivery,
    SukiStandIn,
    attempt_once,
    build_spec,
    make_delivery,
)

from .conftest import check_fails, cli_here
from .fhir_standin import CLIENT_ID, FhirStandIn

PATIENT, ENCOUNTER = "pat-42", "enc-7"
ORACLE_TYPE = {"code": "11506-3", "display": "Progress note"}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> smart.SigningKey:
    return smart.write_new_key(tmp_path_factory.mktemp("keys") / "ehr.pem", "ES384")


@pytest.fixture
def standins(key_file: smart.SigningKey) -> Iterator[Any]:
    made: list[FhirStandIn] = []

    def make(profile: str, **kwargs: Any) -> FhirStandIn:
        kwargs.setdefault("jwks", smart.jwk_set([key_file]))
        server = FhirStandIn(profile, **kwargs)
        server.add_encounter(ENCOUNTER, PATIENT)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


def options(profile: str, ehr: FhirStandIn, key: smart.SigningKey, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"base_url": ehr.base_url, "profile": profile,
                            "subject": "Patient/{{ event.additional_info.patient_id }}",
                            "auth": ehr.smart(key.path)}
    if profile == "epic":
        base["encounter"] = "Encounter/{{ event.additional_info.encounter }}"
    if profile == "oracle":
        base["period"] = {"start": "{{ received_at }}", "end": "{{ received_at }}"}
    if profile == "generic":
        base["auth"] = ehr.oauth()
    return {**base, **extra}


def event(session: str = "s-1", **info: Any) -> dict[str, Any]:
    payload = json.loads(sample("success"))
    payload["session_id"] = session
    payload["additional_info"] = {"patient_id": PATIENT, "encounter": ENCOUNTER, **info}
    return payload


def delivery(session: str = "s-1", at: str = "2026-01-01T00:00:00.000Z", **kwargs: Any
             ) -> Delivery:
    d = make_delivery(event(session), **kwargs)
    d.received_at = at
    return d


PROFILES = ["generic", "epic", "oracle"]


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_files_what_its_ehr_accepts(tmp_path: Path, suki: SukiStandIn, standins: Any,
                                                 key_file: smart.SigningKey, profile: str) -> None:
    ehr = standins(profile)
    spec = build_spec("fhir", options(profile, ehr, key_file), tmp_path, suki=suki.settings())
    note = attempt_once(spec, delivery())
    assert ehr.invalid == [] and ehr.refused == []
    [doc] = ehr.documents.values()
    assert note == f"created DocumentReference/{doc['id']}"
    sent = json.loads(ehr.posts[0].body)
    attachment = sent["content"][0]["attachment"]
    assert sent["status"] == "current" and sent["docStatus"] == "final"
    assert sent["subject"] == {"reference": f"Patient/{PATIENT}"}
    assert base64.b64decode(attachment["data"]).decode().startswith("Assessment\nPHI-NOTE-TEXT")
    headers = ehr.posts[0].headers
    if profile == "generic":
        assert "If-None-Exist" in headers and ehr.searches == []
        assert attachment["contentType"] == "text/plain; charset=utf-8"
    else:  # no conditional create: a search before the create, no If-None-Exist
        assert "If-None-Exist" not in headers and len(ehr.searches) == 1
    if profile == "epic":
        assert attachment["contentType"] == "text/plain" and len(sent["content"]) == 1
        assert sent["context"]["encounter"] == [{"reference": f"Encounter/{ENCOUNTER}"}]
        assert "identifier" not in doc  # Epic keeps no identifier: matched on what it keeps
    if profile == "oracle":
        assert sent["context"]["period"]["end"] == "2026-01-01T00:00:00.000Z"
        assert "identifier" not in doc and "category" not in doc  # unsupported: dropped
    if profile != "generic":  # SMART Backend Services: a verified client assertion
        [assertion] = ehr.assertions
        assert assertion["header"]["alg"] == "ES384"
        assert assertion["header"]["kid"] == key_file.kid
        claims = assertion["claims"]
        assert claims["iss"] == claims["sub"] == CLIENT_ID and claims["aud"] == ehr.token_url
        assert 0 < claims["exp"] - claims["iat"] <= 300


def test_the_epic_standin_ignores_if_none_exist_and_refuses_a_missing_encounter(
        standins: Any, key_file: smart.SigningKey) -> None:
    """The stand-in itself, spoken to directly: it is as strict as the real one."""
    ehr = standins("epic")
    token = _token(ehr, key_file)
    doc = {"resourceType": "DocumentReference", "status": "current", "docStatus": "final",
           "subject": {"reference": f"Patient/{PATIENT}"},
           "content": [{"attachment": {"contentType": "text/plain", "data": "aGk="}}]}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json",
               "If-None-Exist": "identifier=urn:x|1"}
    url = ehr.base_url + "/DocumentReference"
    assert requests.post(url, json=doc, headers=headers, timeout=5).status_code == 422
    doc["context"] = {"encounter": [{"reference": "Encounter/not-this-patients"}]}
    assert requests.post(url, json=doc, headers=headers, timeout=5).status_code == 422
    doc["context"] = {"encounter": [{"reference": f"Encounter/{ENCOUNTER}"}]}
    first = requests.post(url, json=doc, headers=headers, timeout=5)
    second = requests.post(url, json=doc, headers=headers, timeout=5)
    assert (first.status_code, first.content) == (201, b"")
    assert first.headers["Location"] == "DocumentReference/eDoc0001"
    assert second.status_code == 201 and len(ehr.documents) == 2  # If-None-Exist ignored


def test_the_oracle_standin_refuses_a_missing_period_or_charset(
        standins: Any, key_file: smart.SigningKey) -> None:
    ehr = standins("oracle")
    token = _token(ehr, key_file)
    doc: dict[str, Any] = {
        "resourceType": "DocumentReference", "status": "current", "docStatus": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        "subject": {"reference": f"Patient/{PATIENT}"},
        "content": [{"attachment": {"contentType": "text/plain;charset=utf-8", "data": "aGk="}}]}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    url = ehr.base_url + "/DocumentReference"
    assert requests.post(url, json=doc, headers=headers, timeout=5).status_code == 422
    doc["context"] = {"period": {"end": "2026-01-01"}}  # no time part
    assert requests.post(url, json=doc, headers=headers, timeout=5).status_code == 422
    doc["context"] = {"period": {"end": "2026-01-01T10:00:00Z"}}
    doc["content"][0]["attachment"]["contentType"] = "text/plain"
    assert requests.post(url, json=doc, headers=headers, timeout=5).status_code == 422
    doc["content"][0]["attachment"]["contentType"] = "text/plain; charset=utf-8"
    answer = requests.post(url, json=doc, headers=headers, timeout=5)
    assert (answer.status_code, answer.content) == (201, b"")
    assert answer.headers["Location"].startswith("http://127.0.0.1:")
    assert answer.headers["ETag"] == 'W/"0"'
    assert [why for _, why in ehr.refused] == [
        "context.period.end with a time part is required",
        "context.period.end with a time part is required", "contentType without a charset"]


def _token(ehr: FhirStandIn, key: smart.SigningKey) -> str:
    form = {"grant_type": "client_credentials", "client_assertion_type": smart.ASSERTION_TYPE,
            "client_assertion": smart.assertion(key, CLIENT_ID, ehr.token_url)}
    return str(requests.post(ehr.token_url, data=form, timeout=5).json()["access_token"])


# ---------------------------------------------------------------- the answer lost


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("fault", ["drop", "500", "late"])
def test_an_answer_lost_after_the_server_stored_files_one_document(
        tmp_path: Path, suki: SukiStandIn, standins: Any, key_file: smart.SigningKey,
        profile: str, fault: str) -> None:
    """The server stores the document, then hangs up, answers 500 or answers after the
    deadline. Attempts go on until one is done: one document in the chart, never two."""
    ehr = standins(profile)
    spec = build_spec("fhir", options(profile, ehr, key_file, timeout_seconds=1), tmp_path,
                      suki=suki.settings())
    if fault == "drop":
        ehr.drop_after_store = 1
    elif fault == "500":
        ehr.lose_answers = 1
    else:
        ehr.late_after_store = 2.5
    notes = []
    for attempt in range(1, 4):
        try:
            notes.append(attempt_once(spec, delivery(attempt=attempt)))
            break
        except Exception as exc:  # retried, as the deliverer would
            notes.append(type(exc).__name__)
    ehr.sink.release()
    assert len(ehr.documents) == 1, notes
    doc_id = next(iter(ehr.documents))
    assert notes[-1] == f"already filed DocumentReference/{doc_id}"
    assert ehr.invalid == []


@pytest.mark.parametrize("profile", ["epic", "oracle"])
def test_a_replay_or_a_second_relay_finds_the_document_instead_of_filing_again(
        tmp_path: Path, suki: SukiStandIn, standins: Any, key_file: smart.SigningKey,
        profile: str) -> None:
    ehr = standins(profile)
    spec = build_spec("fhir", options(profile, ehr, key_file), tmp_path, suki=suki.settings())
    first = attempt_once(spec, delivery())
    again = attempt_once(spec, delivery())
    other = attempt_once(spec, delivery("s-2", at="2026-01-01T00:00:07.000Z"))
    assert len(ehr.documents) == 2 and len(ehr.posts) == 2
    assert again == first.replace("created", "already filed")  # type: ignore[union-attr]
    assert other.startswith("created")  # type: ignore[union-attr]


def test_a_metadata_endpoint_that_refuses_declares_nothing(
        tmp_path: Path, suki: SukiStandIn, standins: Any, key_file: smart.SigningKey) -> None:
    """A server whose /metadata answers 401 is taken to declare nothing (no conditional
    create, no search): the note is filed, and a lost answer would be in doubt; the
    delivery does not fail."""
    ehr = standins("generic", conditional_create=False)
    ehr.metadata_status = 401
    spec = build_spec("fhir", options("generic", ehr, key_file), tmp_path, suki=suki.settings())
    assert attempt_once(spec, delivery()).startswith("created")  # type: ignore[union-attr]
    assert ehr.searches == [] and "If-None-Exist" not in ehr.posts[0].headers
    ehr.drop_after_store = 1
    with pytest.raises(InDoubtError):
        attempt_once(spec, delivery("s-2", at="2026-01-01T00:00:02.000Z"))


def test_a_capability_statement_of_several_mib_is_read_once(
        tmp_path: Path, suki: SukiStandIn, standins: Any, key_file: smart.SigningKey) -> None:
    """A statement as large as Epic's or Oracle Health's (5 MiB here, DocumentReference in
    its middle) is read whole: its conditional create guards the create, and it is read
    once for the deliveries that follow."""
    ehr = standins("generic", capability_bytes=5 * 2**20)
    spec = build_spec("fhir", options("generic", ehr, key_file), tmp_path, suki=suki.settings())
    assert attempt_once(spec, delivery()).startswith("created")  # type: ignore[union-attr]
    again = attempt_once(spec, delivery())
    assert again is not None and again.startswith("already filed")
    assert all("If-None-Exist" in p.headers for p in ehr.posts) and ehr.searches == []
    assert len(ehr.documents) == 1 and ehr.metadata_reads == 1


def test_a_capability_statement_past_the_bound_is_retried_not_guessed(
        tmp_path: Path, suki: SukiStandIn, standins: Any, key_file: smart.SigningKey) -> None:
    """A statement longer than the relay reads (streamed: the relay stops at the bound
    and hangs up) is a retryable error naming the bound, never read as declaring nothing
    and never cached: once the server answers one the relay can read, the note is filed
    under its guard."""
    ehr = standins("generic", capability_bytes=fhir_guard.MAX_METADATA_BYTES + 2**20)
    spec = build_spec("fhir", options("generic", ehr, key_file, timeout_seconds=60), tmp_path,
                      suki=suki.settings())
    with pytest.raises(RetryableError) as info:
        attempt_once(spec, delivery())
    assert str(info.value) == ("FHIR server (metadata): the CapabilityStatement is larger "
                               "than 32 MiB, the most read; it will be read again")
    assert ehr.posts == [] and ehr.searches == []
    ehr.capability_bytes = 2**20
    assert attempt_once(spec, delivery()).startswith("created")  # type: ignore[union-attr]
    assert "If-None-Exist" in ehr.posts[0].headers and ehr.metadata_reads == 2


def test_where_no_search_can_tell_a_lost_answer_is_in_doubt(
        tmp_path: Path, suki: SukiStandIn, standins: Any, key_file: smart.SigningKey) -> None:
    """A generic server declaring neither conditional create nor search: a lost answer is
    InDoubtError (the delivery goes to `unknown`), never a second POST."""
    ehr = standins("generic", conditional_create=False, search=False)
    spec = build_spec("fhir", options("generic", ehr, key_file, timeout_seconds=1), tmp_path,
                      suki=suki.settings())
    ehr.drop_after_store = 1
    with pytest.raises(InDoubtError, match="offers no DocumentReference search"):
        attempt_once(spec, delivery())
    assert len(ehr.posts) == 1 and len(ehr.documents) == 1
    taken_over = delivery("s-9", at="2026-01-01T00:00:09.000Z")
    taken_over.taken_over = True  # its last attempt's worker died mid-create
    with pytest.raises(InDoubtError, match="cut off mid-create"):
        attempt_once(spec, taken_over)
    assert len(ehr.posts) == 1


@pytest.mark.parametrize("down", ["the token endpoint", "the FHIR server"])
def test_a_create_that_never_left_is_retried_not_in_doubt(
        tmp_path: Path, suki: SukiStandIn, standins: Any, key_file: smart.SigningKey,
        down: str) -> None:
    """Where no search can tell, only a create that may have reached the server is in
    doubt: one that never left (no token to send it with, the server refusing the
    connection while it restarts) is retried, and filed once the server is back."""
    ehr = standins("generic", conditional_create=False, search=False)
    spec = build_spec("fhir", options("generic", ehr, key_file, timeout_seconds=2), tmp_path,
                      suki=suki.settings())
    assert attempt_once(spec, delivery()).startswith("created")  # type: ignore[union-attr]
    if down == "the token endpoint":
        ehr.revoke_tokens()  # the next create is refused 401: a new token is needed
        ehr.token_status = 503
    else:  # its statement and the token still known; the kept connection closed with it
        ehr.stop()
    with pytest.raises(RetryableError) as info:
        attempt_once(spec, delivery("s-2", at="2026-01-01T00:00:02.000Z"))
    assert not isinstance(info.value, InDoubtError)
    if down == "the token endpoint":
        assert len(ehr.documents) == 1
        ehr.token_status = 200
        assert attempt_once(spec, delivery("s-2", at="2026-01-01T00:00:02.000Z")
                            ).startswith("created")  # type: ignore[union-attr]
        assert len(ehr.documents) == 2


def test_a_generic_server_with_search_but_no_conditional_create_is_searched_by_identifier(
        tmp_path: Path, suki: SukiStandIn, standins: Any, key_file: smart.SigningKey) -> None:
    ehr = standins("generic", conditional_create=False)
    spec = build_spec("fhir", options("generic", ehr, key_file), tmp_path, suki=suki.settings())
    ehr.drop_after_store = 1
    assert attempt_once(spec, delivery()) == "already filed DocumentReference/1"
    assert "identifier=urn%3Asuki%3Asession-id%7Cs-1" in ehr.searches[0].path
    assert "If-None-Exist" not in ehr.posts[0].headers and len(ehr.documents) == 1


def test_a_candidate_that_cannot_be_told_apart_is_in_doubt(
        tmp_path: Path, suki: SukiStandIn, standins: Any, key_file: smart.SigningKey) -> None:
    ehr = standins("epic")
    spec = build_spec("fhir", options("epic", ehr, key_file), tmp_path, suki=suki.settings())
    attempt_once(spec, delivery())
    next(iter(ehr.documents.values())).pop("date")  # an EHR that keeps no date
    with pytest.raises(InDoubtError, match="cannot tell"):
        attempt_once(spec, delivery("s-2", at="2026-01-01T00:00:05.000Z"))
    assert len(ehr.posts) == 1


@pytest.mark.parametrize("stored_id", [None, "PHI Doe, Jane"])
def test_a_match_found_without_a_usable_id_is_still_filed(
        tmp_path: Path, suki: SukiStandIn, standins: Any, key_file: smart.SigningKey,
        stored_id: str | None) -> None:
    """The search finds the relay's document but the server gives it no id, or one that is
    not a FHIR id: the note is filed all the same (never a second create), and nothing of
    what the server put there is repeated."""
    ehr = standins("generic", conditional_create=False)
    spec = build_spec("fhir", options("generic", ehr, key_file), tmp_path, suki=suki.settings())
    attempt_once(spec, delivery())
    (doc,) = ehr.documents.values()
    if stored_id is None:
        doc.pop("id")
    else:
        doc["id"] = stored_id
    assert attempt_once(spec, delivery()) == "already filed DocumentReference (no id returned)"
    assert len(ehr.posts) == 1


@pytest.mark.parametrize("unread", ["pages past the last read", "a next link elsewhere"])
def test_a_search_with_pages_left_unread_is_in_doubt(
        tmp_path: Path, suki: SukiStandIn, standins: Any, key_file: smart.SigningKey,
        unread: str) -> None:
    """The patient has more notes of the type than the pages the relay reads (newest
    first: the relay's is the oldest), or the next page is on another host (never asked,
    the token stays here): the search cannot say the note is not filed, so a replay is
    `unknown`, never a second create."""
    ehr = standins("oracle", page_size=2)
    spec = build_spec("fhir", options("oracle", ehr, key_file), tmp_path, suki=suki.settings())
    attempt_once(spec, delivery())
    others = 2 * fhir_guard.MAX_PAGES if unread.startswith("pages") else 2
    for n in range(others):
        attempt_once(spec, delivery(f"s-{n + 2}", at=f"2026-01-01T00:01:{n:02d}.000Z"))
    if unread.endswith("elsewhere"):
        ehr.next_base = "http://127.0.0.1:9/r4"
    with pytest.raises(InDoubtError, match="cannot tell whether this note is filed"):
        attempt_once(spec, delivery())
    assert len(ehr.posts) == others + 1 and len(ehr.documents) == others + 1


# ---------------------------------------------------------------- the patient, the note


def test_a_recovered_session_is_filed_under_the_encounters_patient(
        tmp_path: Path, suki: SukiStandIn, standins: Any, key_file: smart.SigningKey) -> None:
    """A recovered event carries no additional_info: subject from_encounter reads the
    Encounter (with the same token) and files under its subject, remembered a while."""
    ehr = standins("epic")
    ehr.add_encounter("29de56bc-960a-4cd5-b18f-79a798d62874", PATIENT)
    spec = build_spec("fhir", options("epic", ehr, key_file, subject="from_encounter",
                                      encounter="Encounter/{{ event.encounter_id }}"),
                      tmp_path, suki=suki.settings())
    recovered = json.loads(sample("success"))
    del recovered["additional_info"]
    for i in range(2):
        d = make_delivery(recovered)
        d.event["session_id"] = f"rec-{i}"
        d.received_at = f"2026-01-01T00:00:0{i}.000Z"
        d.recovered = True
        assert attempt_once(spec, d).startswith("created")  # type: ignore[union-attr]
    assert [d["subject"] for d in ehr.documents.values()] == [
        {"reference": f"Patient/{PATIENT}"}] * 2
    assert len(ehr.reads) == 1 and ehr.reads[0].headers["Authorization"].startswith("Bearer ")
    missing = make_delivery(recovered)
    missing.event["encounter_id"] = "nobody-knows"
    with pytest.raises(PermanentError, match="no such encounter"):
        attempt_once(spec, missing)


@pytest.mark.parametrize("profile", ["epic", "oracle"])
def test_a_5_mib_note_is_filed_whole(tmp_path: Path, standins: Any,
                                     key_file: smart.SigningKey, profile: str) -> None:
    big = {"summary": [{"title": "Assessment", "content": "PHI-NOTE " + "x" * (5 << 20)}]}
    with SukiStandIn(content=big) as suki:
        ehr = standins(profile)
        spec = build_spec("fhir", options(profile, ehr, key_file), tmp_path,
                          suki=suki.settings())
        assert attempt_once(spec, delivery()).startswith("created")  # type: ignore[union-attr]
        # a replay searches first: the answer holds the note inline, far over 1 MiB
        assert attempt_once(spec, delivery()).startswith("already filed")  # type: ignore[union-attr]
    [doc] = ehr.documents.values()
    assert len(base64.b64decode(doc["content"][0]["attachment"]["data"])) > 5 << 20
    assert ehr.invalid == []


# ---------------------------------------------------------------- SMART Backend Services


def test_the_token_endpoint_refuses_a_replayed_or_wrong_assertion(
        standins: Any, key_file: smart.SigningKey, tmp_path: Path) -> None:
    import jwt

    ehr = standins("epic")
    good = smart.assertion(key_file, CLIENT_ID, ehr.token_url)
    form = {"grant_type": "client_credentials", "client_assertion_type": smart.ASSERTION_TYPE}

    def ask(assertion: str) -> int:
        return requests.post(ehr.token_url, data={**form, "client_assertion": assertion},
                             timeout=5).status_code

    assert ask(good) == 200
    assert ask(good) == 401  # the same jti again
    wrong_aud = smart.assertion(key_file, CLIENT_ID, ehr.token_url + "/x")
    other = smart.write_new_key(tmp_path / "other.pem", "ES384")
    foreign = smart.assertion(smart.SigningKey(other.path, "ES384", key_file.kid, other.key),
                              CLIENT_ID, ehr.token_url)
    far = jwt.encode({"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": ehr.token_url, "jti": "j-far",
                      "exp": 2_000_000_000}, key_file.key, algorithm="ES384",
                     headers={"kid": key_file.kid})
    assert [ask(a) for a in (wrong_aud, foreign, far)] == [401, 401, 401]
    assert ehr.refused_tokens == ["jti reused", "aud", "signature", "exp more than 5 minutes ahead"]
    secret = requests.post(ehr.token_url, data={"grant_type": "client_credentials",
                                                "client_id": CLIENT_ID, "client_secret": "s"},
                           timeout=5)
    assert secret.status_code == 401  # Epic registers backend clients by key, not secret


def test_every_token_request_signs_a_new_assertion(tmp_path: Path, suki: SukiStandIn,
                                                   standins: Any, key_file: smart.SigningKey) -> None:
    ehr = standins("oracle", token_lifetime=1.0)
    spec = build_spec("fhir", options("oracle", ehr, key_file), tmp_path, suki=suki.settings())
    attempt_once(spec, delivery())
    ehr.revoke_tokens()  # a 401 next: a new token, a new assertion
    attempt_once(spec, delivery("s-2", at="2026-01-01T00:00:03.000Z"))
    jtis = [a["claims"]["jti"] for a in ehr.assertions]
    assert len(jtis) == 2 and len(set(jtis)) == 2


def test_a_granted_scope_without_documentreference_fails_clearly(
        tmp_path: Path, suki: SukiStandIn, standins: Any, key_file: smart.SigningKey) -> None:
    ehr = standins("epic", granted_scope="system/Patient.read")
    spec = build_spec("fhir", options("epic", ehr, key_file), tmp_path, suki=suki.settings())
    with pytest.raises(PermanentError, match="granted no scope that allows creating"):
        attempt_once(spec, delivery())
    assert ehr.posts == []


def test_keys_new_writes_an_owner_only_key_and_prints_only_the_public_set(tmp_path: Path) -> None:
    result = cli_here("keys", "new", "signing.pem", "--alg", "RS384", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    key = tmp_path / "signing.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    published = json.loads(result.stdout)
    [jwk] = published["keys"]
    assert jwk["kty"] == "RSA" and jwk["alg"] == "RS384" and "d" not in jwk and "p" not in jwk
    assert "PRIVATE" not in result.stdout + result.stderr
    again = cli_here("keys", "new", "signing.pem", cwd=tmp_path)
    assert again.returncode == 1 and "never overwritten" in again.stderr


def test_the_relay_publishes_every_configured_key_and_no_private_part(
        write_config: Any, local_relay: Any, tmp_path: Path, suki: SukiStandIn,
        key_file: smart.SigningKey) -> None:
    old = smart.write_new_key(tmp_path / "old.pem", "RS384")
    cfg = write_config({"suki": suki.settings(), "actions": {"file-note": {
        "type": "fhir", "base_url": "https://ehr.example.org/api/FHIR/R4", "profile": "epic",
        "subject": "Patient/{{ event.additional_info.patient_id }}",
        "encounter": "Encounter/{{ event.encounter_id }}",
        "auth": {"token_url": "https://ehr.example.org/oauth2/token", "client_id": CLIENT_ID,
                 "private_key_file": [key_file.path, "old.pem"]}}},
        "rules": [{"name": "notes", "when": {"status": "success"}, "do": ["file-note"]}]})
    r = local_relay(cfg, deliver=False)
    answer = r.client.get("/.well-known/jwks.json")
    assert answer.status_code == 200
    assert [k["kid"] for k in answer.json["keys"]] == [key_file.kid, old.kid]
    assert not any(set(k) & {"d", "p", "q", "dp", "dq", "qi"} for k in answer.json["keys"])
    spec = r.config.actions["file-note"]
    creds = spec.action.credentials
    assert "PRIVATE" not in repr(creds.client) and "PRIVATE" not in repr(creds.public_keys())
    assert "key=" not in repr(creds.public_keys()[0])


@pytest.mark.parametrize("config, says", [
    ("profile: epic", "encounter: required by profile epic"),
    ("profile: oracle", "period: required by profile oracle"),
    ("profile: oracle\n    period: {end: '2026-01-01'}", "period.end: expected a date-time"),
    ("profile: oracle\n    period: {end: '{{ received_at }}'}\n    attach_json: true",
     "attach_json: profile oracle files exactly one attachment"),
    ("profile: oracle\n    period: {end: '{{ received_at }}'}\n"
     "    document_type: {code: '1', display: x, system: 'urn:x'}", "code set 72"),
    ("profile: epic\n    encounter: Encounter/1\n    doc_status: amended",
     "doc_status: profile epic takes final or preliminary"),
    ("subject: from_encounter", "from_encounter needs `encounter`"),
])
def test_check_names_a_config_its_profile_cannot_meet(tmp_path: Path, config: str,
                                                      says: str) -> None:
    text = f"""receiver: {{secret: s}}
suki: {{base_url: "https://suki.example", partner_id: p, partner_token: t}}
actions:
  file-note:
    type: fhir
    base_url: https://ehr.example.org/fhir
    subject: "Patient/1"
    {config}
"""
    report = check_fails(tmp_path, text.replace('    subject: "Patient/1"\n    subject:',
                                                "    subject:"))
    assert says in report
    line = next(n for n, text_line in enumerate(report.splitlines()) if says in text_line)
    assert "actions.yaml:" in report.splitlines()[line]


def test_check_names_a_key_file_it_cannot_use(tmp_path: Path) -> None:
    (tmp_path / "loose.pem").write_bytes(Path(smart.write_new_key(
        tmp_path / "k.pem", "ES384").path).read_bytes())
    (tmp_path / "loose.pem").chmod(0o644)
    (tmp_path / "junk.pem").write_text("not a key")
    for name, says in (("loose.pem", "readable by others"), ("junk.pem", "not an unencrypted PEM"),
                       ("gone.pem", "cannot be read")):
        report = check_fails(tmp_path, f"""receiver: {{secret: s}}
suki: {{base_url: "https://suki.example", partner_id: p, partner_token: t}}
actions:
  file-note:
    type: fhir
    base_url: https://ehr.example.org/fhir
    subject: "Patient/1"
    auth:
      token_url: https://ehr.example.org/token
      client_id: c
      private_key_file: {name}
      alg: ES384
""")
        assert says in report and "BEGIN" not in report
    with pytest.raises(ConfigError, match="holds a key for ES384, not RS384"):
        build_spec("fhir", {"base_url": "https://e.example", "subject": "Patient/1",
                            "auth": {"token_url": "https://e.example/t", "client_id": "c",
                                     "private_key_file": "k.pem", "alg": "RS384"}}, tmp_path)
