"""What a FHIR server or an OAuth2 token endpoint answers goes through the bounded parser
Suki's replies go through (protocol.parse_json): a reply nested past any recursion limit,
one with NaN or a number no float holds, or one too large to keep, is an ordinary short
error for that attempt, never a RecursionError, and never repeats the reply. JSON of the
wrong shape where FHIR names one is read as saying nothing, never as a TypeError."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from suki_relay.deliver import oauth
from suki_relay.deliver.outbound import MAX_REPLY_BYTES
from suki_relay.errors import DeliveryError, InDoubtError, PermanentError, RetryableError
from suki_relay.testing import (
    Received,
    Reply,
    Sink,
    SukiStandIn,
    attempt_once,
    build_spec,
    make_delivery,
    wait_until,
)

from .conftest import success_event
from .fhir_standin import FhirStandIn

MARK = "PHI-REPLY"  # in every hostile reply; never in an error
DEEP = (b'{"resourceType": "Bundle", "PHI-REPLY": ' + b"[" * 200_000 + b"]" * 200_000
        + b"}")  # past any recursion limit
HUGE = json.dumps({"access_token": "T", "resourceType": "Bundle",
                   "pad": MARK * (2 * MAX_REPLY_BYTES // len(MARK))}).encode()
JSON = {"Content-Type": "application/json"}


def token_endpoint(body: bytes, status: int = 200) -> Sink:
    return Sink(default=Reply(status, body, JSON))


def tokens_from(endpoint: Sink) -> oauth.Tokens:
    tokens = oauth.credentials({"token_url": endpoint.url + "/token", "client_id": "c",
                                "client_secret": "s"})
    assert isinstance(tokens, oauth.Tokens)
    return tokens


@pytest.mark.parametrize("body, error, says", [
    (DEEP, RetryableError, "answered with a body that is not JSON (or is nested too deeply)"),
    (b'{"access_token": "T", "expires_in": NaN, "PHI-REPLY": 1}', RetryableError,
     "not JSON"),
    (b'{"access_token": "T", "expires_in": 1e999, "PHI-REPLY": 1}', RetryableError,
     "not JSON"),
    (b'{"access_token": "T", "expires_in": "NaN", "PHI-REPLY": 1}', RetryableError,
     "an expires_in that is not a number of seconds"),
    (b'{"access_token": "T", "expires_in": "-Infinity", "PHI-REPLY": 1}', RetryableError,
     "an expires_in that is not a number of seconds"),
    (HUGE, PermanentError, f"the reply body is larger than {MAX_REPLY_BYTES} bytes"),
    (b"\xff\xfe{PHI-REPLY", RetryableError, "not JSON"),
    (b'{"access_token": "T-\\u2603", "PHI-REPLY": 1}', RetryableError, "usable access_token"),
    (b'{"access_token": "T one", "PHI-REPLY": 1}', RetryableError, "usable access_token"),
])
def test_a_hostile_token_answer_grants_no_token(body: bytes, error: type, says: str) -> None:
    with token_endpoint(body) as endpoint, pytest.raises(error) as info:
        tokens_from(endpoint).authorization()
    message = str(info.value)
    assert message.startswith("OAuth2 token endpoint") and says in message
    assert MARK not in message and len(message) < 200


def test_the_same_endpoint_answering_plain_json_grants_the_token() -> None:
    """The tests above can fail: a sound answer from the same kind of endpoint is taken."""
    body = b'{"access_token": "T-1", "expires_in": 3600.5, "token_type": "bearer"}'
    with token_endpoint(body) as endpoint:
        assert tokens_from(endpoint).authorization() == "Bearer T-1"


@pytest.mark.parametrize("body", [
    DEEP, b'{"error": "invalid_client", "x": NaN}', b'{"error": ' * 50_000 + b"1",
    json.dumps({"error": "invalid_client", "pad": MARK * 300_000}).encode()])
def test_a_hostile_refusal_names_only_the_status(body: bytes) -> None:
    with token_endpoint(body, 401) as endpoint, pytest.raises(PermanentError) as info:
        tokens_from(endpoint).authorization()
    assert str(info.value) == "OAuth2 token endpoint refused the client credentials (401)"


# ---------------------------------------------------------------- the FHIR server


class HostileFhir(FhirStandIn):
    """Answers ``hostile`` (status, body) to the requests ``when`` picks out; the rest as
    the FHIR stand-in does."""

    def __init__(self, when: str, hostile: Reply, **kwargs: Any):
        super().__init__(**kwargs)
        self.when, self.hostile = when, hostile

    def handle(self, got: Received) -> Reply:
        rest = got.path.split("?")[0][len(self.base_path) + 1:]
        picked = {"metadata": rest == "metadata",
                  "search": rest == "DocumentReference" and got.method == "GET",
                  "create": rest == "DocumentReference" and got.method == "POST",
                  "encounter": rest.startswith("Encounter/")}[self.when]
        if picked:
            if self.when == "create":
                super().handle(got)  # filed, then the answer is replaced
            return self.hostile
        return super().handle(got)


def file_note(tmp_path: Path, suki: SukiStandIn, ehr: FhirStandIn, **options: Any) -> str | None:
    spec = build_spec("fhir", {"base_url": ehr.base_url, "auth": ehr.oauth(),
                               "subject": "Patient/{{ event.additional_info.patient_id }}",
                               **options}, tmp_path, suki=suki.settings())
    return attempt_once(spec, make_delivery(success_event("pat-1")))


BODIES = {"deep": DEEP, "nan": b'{"resourceType": "Bundle", "total": NaN, "PHI-REPLY": 1}',
          "huge": json.dumps({"resourceType": "Bundle", "pad": MARK * 300_000}).encode()}


SEARCH = {"conditional_create": False}  # the stand-in declares none: a search guards
FROM_ENCOUNTER = {"subject": "from_encounter", "encounter": "Encounter/enc-1"}


@pytest.mark.parametrize("when, kind, stand_in, options, error, says", [
    ("search", "deep", SEARCH, {}, RetryableError,
     "FHIR server (search) answered with no Bundle"),
    ("search", "nan", SEARCH, {}, RetryableError, "FHIR server (search) answered with no Bundle"),
    ("encounter", "deep", {}, FROM_ENCOUNTER, PermanentError, "the encounter names no subject"),
    ("encounter", "nan", {}, FROM_ENCOUNTER, PermanentError, "the encounter names no subject"),
    ("encounter", "huge", {}, FROM_ENCOUNTER, PermanentError,
     f"FHIR server (encounter): the reply body is larger than {MAX_REPLY_BYTES} bytes"),
])
def test_a_hostile_read_fails_the_attempt_plainly(tmp_path: Path, suki: SukiStandIn, when: str,
                                                  kind: str, stand_in: dict[str, Any],
                                                  options: dict[str, Any], error: type,
                                                  says: str) -> None:
    with HostileFhir(when, Reply(200, BODIES[kind], JSON), encounters={"enc-1": "pat-1"},
                     **stand_in) as ehr:
        with pytest.raises(DeliveryError) as info:
            file_note(tmp_path, suki, ehr, **options)
        assert ehr.documents == {}
    message = str(info.value)
    assert type(info.value) is error and says in message
    assert MARK not in message and len(message) < 200


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_a_hostile_answer_to_a_create_still_records_it_filed(tmp_path: Path, suki: SukiStandIn,
                                                             kind: str) -> None:
    with HostileFhir("create", Reply(201, BODIES[kind], JSON)) as ehr:
        assert file_note(tmp_path, suki, ehr) == "created (no id returned)"
        assert len(ehr.documents) == 1


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_a_hostile_refusal_of_a_create_names_only_the_status(tmp_path: Path, suki: SukiStandIn,
                                                             kind: str) -> None:
    with HostileFhir("create", Reply(422, BODIES[kind].replace(b"Bundle", b"OperationOutcome"),
                                     JSON)) as ehr, pytest.raises(PermanentError) as info:
        file_note(tmp_path, suki, ehr)
    assert str(info.value) == "FHIR server answered 422"


@pytest.mark.parametrize("kind", ["deep", "nan", "huge"])
def test_hostile_metadata_declares_nothing(tmp_path: Path, suki: SukiStandIn, kind: str) -> None:
    """A CapabilityStatement that cannot be read declares nothing: the action files as for
    a server that declares nothing. (One too large to read is retried: test_fhir_ehr.py.)"""
    with HostileFhir("metadata", Reply(200, BODIES[kind].replace(
            b"Bundle", b"CapabilityStatement"), JSON)) as ehr:
        assert (file_note(tmp_path, suki, ehr) or "").startswith("created DocumentReference/")
        assert len(ehr.documents) == 1


def endless_bundle() -> Iterator[bytes]:
    """A searchset that never ends (until the client hangs up): past any bound."""
    yield b'{"resourceType": "Bundle", "type": "searchset", "entry": ['
    entry = json.dumps({"resource": {"resourceType": "DocumentReference",
                                     "description": MARK}}).encode() + b", "
    chunk = entry * (64 * 1024 // len(entry))
    while True:
        yield chunk


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_search_page_past_the_bound_leaves_the_delivery_unknown(
        write_config, local_relay, suki: SukiStandIn) -> None:  # type: ignore[no-untyped-def]
    """A search answer longer than the relay reads (64 MiB; streamed, the relay stops at
    the bound and hangs up) cannot tell whether the note is filed: the delivery is
    `unknown`, for an operator, and nothing is created."""
    with HostileFhir("search", Reply(200, headers=JSON, stream=endless_bundle),
                     **SEARCH) as ehr:
        cfg = write_config({
            "suki": suki.settings(),
            "actions": {"file-note": {
                "type": "fhir", "base_url": ehr.base_url, "auth": ehr.oauth(),
                "subject": "Patient/{{ event.additional_info.patient_id }}",
                "timeout_seconds": 120}},
            "rules": [{"name": "notes", "when": {"status": "success"}, "do": ["file-note"]}]})
        r = local_relay(cfg)
        event_id = r.accept(json.dumps(success_event("pat-1")).encode())
        wait_until(lambda: [d.state for d in r.store.deliveries(event_id=event_id)
                            if d.state != "pending"] == ["unknown"],
                   timeout=120, message="the delivery in doubt")
        searched = [g for g in ehr.sink.received if "/DocumentReference?" in g.path]
        assert ehr.posts == [] and ehr.documents == {} and len(searched) == 1
    (d,) = r.store.event(event_id).deliveries
    assert [(a.outcome, a.error) for a in d.attempts] == [
        ("unknown", "the FHIR server's search answer is too large to tell whether this "
                    "note is filed")]


# ---------------------------------------------------------------- JSON, but not shaped as FHIR says

ODD_CAPABILITIES = [
    {"resourceType": "CapabilityStatement", "rest": 5},
    {"resourceType": "CapabilityStatement", "rest": [{"resource": [{
        "type": "DocumentReference", "conditionalCreate": True, "searchParam": 7,
        "interaction": [{"code": ["create"]}, {"code": {"x": 1}}, "search-type"]}]}]},
]


@pytest.mark.parametrize("statement", ODD_CAPABILITIES)
def test_a_statement_shaped_oddly_declares_nothing(tmp_path: Path, suki: SukiStandIn,
                                                   statement: Any) -> None:
    with HostileFhir("metadata", Reply(200, json.dumps(statement).encode(), JSON)) as ehr:
        assert (file_note(tmp_path, suki, ehr) or "").startswith("created DocumentReference/")
        assert len(ehr.documents) == 1 and ehr.searches == []


def test_a_search_answer_shaped_oddly_is_judged_safely(tmp_path: Path,
                                                       suki: SukiStandIn) -> None:
    """A candidate whose every field is the wrong kind cannot be told apart: the outcome is
    unknown, for an operator (nothing is filed twice); a Bundle whose entry is no list
    holds no candidate, so the note is filed."""
    odd = {"resourceType": "Bundle", "link": {"relation": "next"}, "entry": [
        "junk", {"search": "x", "resource": {"resourceType": "DocumentReference",
                                             "identifier": 5, "type": "x", "date": []}}]}
    with HostileFhir("search", Reply(200, json.dumps(odd).encode(), JSON),
                     **SEARCH) as ehr:
        with pytest.raises(InDoubtError, match="the search cannot tell"):
            file_note(tmp_path, suki, ehr)
        assert ehr.documents == {}
    empty = {"resourceType": "Bundle", "entry": 7, "link": [{"relation": "next", "url": 5}]}
    with HostileFhir("search", Reply(200, json.dumps(empty).encode(), JSON),
                     **SEARCH) as ehr:
        assert (file_note(tmp_path, suki, ehr) or "").startswith("created DocumentReference/")
        assert len(ehr.documents) == 1


@pytest.mark.parametrize("issues", [5, {"code": "processing"}, [["processing"]]])
def test_an_outcome_shaped_oddly_names_only_the_status(tmp_path: Path, suki: SukiStandIn,
                                                       issues: Any) -> None:
    body = json.dumps({"resourceType": "OperationOutcome", "issue": issues}).encode()
    with HostileFhir("create", Reply(422, body, JSON)) as ehr, \
            pytest.raises(PermanentError) as info:
        file_note(tmp_path, suki, ehr)
    assert str(info.value) == "FHIR server answered 422"
