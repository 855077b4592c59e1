"""``fhir``: file the note in an EHR as a FHIR R4 DocumentReference, once.

The note (the ``contents`` document, or ``encounter_content``) is fetched by the core like
any ``fetch:``, turned into plain text, and POSTed as a DocumentReference to
``{base_url}/DocumentReference``, built as the ``profile`` (generic, epic, oracle; see
fhir_profiles.py) says that EHR accepts it.

Filed once (fhir_guard.py): with ``If-None-Exist`` where the server declares conditional
create; elsewhere by searching before each create, and after a create whose answer was lost
(no answer, a reset, the deadline passed, a 5xx): a document found is the outcome; none
found, it is created (again). Where no search can tell, the delivery goes to ``unknown``
(InDoubtError), neither retried nor failed, for an operator to settle.

Outcomes: 201 or 200 is done (the attempt's note records the resource id); 412 and every
other 4xx fail for good; 429 and 408 retry. Errors name only the status and the
OperationOutcome issue codes: an OperationOutcome's diagnostics text can quote the
resource, which is protected health information.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import threading
import time
from typing import Any
from urllib.parse import quote, urlencode

import requests

from suki_relay.actions import fhir_guard
from suki_relay.actions.fhir_profiles import (
    LOINC,
    PROFILES,
    RELATIVE_PATIENT,
    TIME_PART,
    US_CORE_CATEGORY,
    Profile,
)
from suki_relay.plugin import (
    CONTENT_RELATIONS,
    MASK,
    Action,
    Delivery,
    InDoubtError,
    Option,
    PermanentError,
    RetryableError,
    mask_secret_keys,
    note_text,
    oauth,
    outbound,
)
from suki_relay.protocol import parse_json

DEFAULT_TYPE = {"code": "11506-3", "display": "Progress note"}
DEFAULT_IDENTIFIER_SYSTEM = "urn:suki:session-id"
FHIR_JSON = "application/fhir+json"
FROM_ENCOUNTER = "from_encounter"
ENCOUNTER_SECONDS = 300.0  # how long an encounter's patient is remembered
_ID = fhir_guard.FHIR_ID
# SMART scopes that allow creating a DocumentReference (v1 write or *, v2 c...)
_CREATE_SCOPE = re.compile(r"^(system|user)/(DocumentReference|\*)\.(write|\*|c[ruds]*)$")
# FHIR R4's IssueType value set: only these are repeated from a server's answer, so a
# server cannot put free text (possibly PHI) into an error message by calling it a code
ISSUE_CODES = frozenset((
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown",
    "expired", "forbidden", "suppressed", "processing", "not-supported", "duplicate",
    "multiple-matches", "not-found", "deleted", "too-long", "code-invalid", "extension",
    "too-costly", "business-rule", "conflict", "transient", "lock-error", "no-store",
    "exception", "timeout", "incomplete", "throttled", "informational"))


_TYPE_KEYS = ("code", "display", "system")
# subject: from_encounter: (base URL, encounter id) -> (until, "Patient/<id>"), per process
_PATIENTS: dict[tuple[str, str], tuple[float, str]] = {}
_PATIENTS_LOCK = threading.Lock()


class FhirAction(Action):
    description = "file the note in an EHR as a FHIR R4 DocumentReference, once"
    options = {
        "base_url": Option(str, required=True, template=False,
                           help="the FHIR server's base URL, e.g. https://ehr.example.org/fhir/r4"),
        "profile": Option(str, default="generic", choices=tuple(PROFILES), template=False,
                          help="what the EHR accepts and how a note is filed once: generic, "
                               "epic or oracle"),
        "subject": Option(str, required=True,
                          help='a reference template, e.g. "Patient/{{ event.additional_info'
                               '.patient_id }}", or from_encounter (the encounter\'s patient)'),
        "encounter": Option(str, help="context.encounter reference template"),
        "period": Option(dict, help="context.period: {start, end} templates (date-times)"),
        "author": Option(str, help="author reference template, e.g. Practitioner/..."),
        "document_type": Option(dict, default=DEFAULT_TYPE, template=False,
                                help="{code, display} (LOINC; `system` to use another)"),
        "doc_status": Option(str, default="final", template=False,
                             choices=("final", "preliminary", "amended"),
                             help="docStatus (what each profile takes: see the docs)"),
        "title": Option(str, help="the attachment's title; default: the type's display"),
        "identifier_system": Option(str, default=DEFAULT_IDENTIFIER_SYSTEM, template=False,
                                    help="the identifier system the session id is filed under"),
        "note": Option(str, default="contents", choices=CONTENT_RELATIONS, template=False,
                       help="which Suki content document is the note"),
        "attach_json": Option(bool, default=False, template=False,
                              help="also attach the content document as application/json "
                                   "(generic only)"),
        "auth": Option(dict, secret=True, template=False,
                       help="{bearer: TOKEN}, {token_url, client_id, client_secret, scope} or "
                            "SMART Backend Services {token_url, client_id, private_key_file, "
                            "alg, kid, scope, jku}"),
        "timeout_seconds": Option(float, default=20.0, template=False,
                                  help="bounds each whole request (the token endpoint's too)"),
    }

    @property
    def base(self) -> str:
        return str(self.values["base_url"]).rstrip("/")

    @property
    def url(self) -> str:
        return self.base + "/DocumentReference"

    @property
    def profile(self) -> Profile:
        return PROFILES[self.values["profile"]]

    @functools.cached_property
    def credentials(self) -> oauth.Bearer | oauth.Tokens | None:
        """Shared per process with every action that names the same client (oauth's cache)."""
        return oauth.credentials(self.values["auth"], self.values["timeout_seconds"],
                                 self.relay.base_dir)

    def public_keys(self) -> list[dict[str, Any]]:
        creds = self.credentials
        return [k.public_jwk() for k in creds.public_keys()] \
            if isinstance(creds, oauth.Tokens) else []

    def check(self) -> list[str]:
        problems = []
        if not str(self.values["base_url"]).startswith(("http://", "https://")):
            problems.append("base_url: expected an http:// or https:// URL")
        kind = self.values["document_type"]
        if not isinstance(kind.get("code"), str) or not kind["code"] or any(
                k not in _TYPE_KEYS or not isinstance(v, str) for k, v in kind.items()):
            problems.append("document_type: expected {code: ..., display: ...} (strings; "
                            f"optional system, default {LOINC})")
        auth = self.values["auth"]
        if auth is not None:
            found = oauth.auth_problems(auth)
            if not found and isinstance(auth, dict) and "private_key_file" in auth:
                found = oauth.key_problems(auth, self.relay.base_dir)
            problems += found
        if not 0 < self.values["timeout_seconds"] <= 300:
            problems.append("timeout_seconds: expected more than 0 and at most 300")
        period = self.values["period"]
        if period is not None and (not period or not set(period) <= {"start", "end"}):
            problems.append("period: expected {start: ..., end: ...}")
        elif period is not None:
            for key, value in period.items():
                if isinstance(value, str) and not TIME_PART.match(value):
                    problems.append(f"period.{key}: expected a date-time with a time part "
                                    "(or a template)")
        if self._subject_from_encounter() and self.values["encounter"] is None:
            problems.append("subject: from_encounter needs `encounter` (the encounter to "
                            "read the patient from)")
        return problems + self.profile.problems(self.values)

    def fetches(self) -> tuple[str, ...]:
        return (self.values["note"],)

    def _subject_from_encounter(self) -> bool:
        subject = self.values["subject"]
        return str(getattr(subject, "source", subject)).strip() == FROM_ENCOUNTER

    # ---------------------------------------------------------------- the resource

    def resource(self, delivery: Delivery, subject: str | None = None) -> dict[str, Any]:
        """The DocumentReference for this delivery, as plain dicts. ``subject``: the
        patient reference already found (from the encounter)."""
        session = delivery.event.get("session_id") if isinstance(delivery.event, dict) else None
        if not isinstance(session, str) or not session:
            raise PermanentError("the event has no session_id to identify the document by")
        profile = self.profile
        document = delivery.fetched[self.values["note"]]
        kind = self.values["document_type"]
        display = kind.get("display") or kind["code"]
        title = self.render("title", delivery) or display
        if subject is None:
            subject = self.reference("subject", delivery)
        if profile.relative_patient and not RELATIVE_PATIENT.match(subject):
            raise PermanentError(f"subject: profile {profile.name} files under a relative "
                                 "Patient/<id> reference")
        resource: dict[str, Any] = {
            "resourceType": "DocumentReference",
            "identifier": [{"system": self.values["identifier_system"], "value": session}],
            "status": "current",
            "docStatus": self.values["doc_status"],
            "type": {"coding": [{"system": kind.get("system", LOINC), "code": kind["code"],
                                 "display": display}], "text": display},
            "category": [{"coding": [{"system": US_CORE_CATEGORY, "code": "clinical-note",
                                      "display": "Clinical Note"}]}],
            "subject": {"reference": subject},
            "date": delivery.received_at,
        }
        if self.values["author"] is not None:
            resource["author"] = [{"reference": self.reference("author", delivery)}]
        attachments = [{"contentType": profile.content_type,
                        "data": _b64(note_text(document, empty_ok=False)), "title": title}]
        if self.values["attach_json"]:
            attachments.append({"contentType": "application/json",
                                "data": _b64(json.dumps(document, ensure_ascii=False)),
                                "title": f"{title} (Suki content, JSON)"})
        resource["content"] = [{"attachment": a} for a in attachments]
        context: dict[str, Any] = {}
        if self.values["encounter"] is not None:
            context["encounter"] = [{"reference": self.reference("encounter", delivery)}]
        if self.values["period"] is not None:
            period = {k: str(v).strip() for k, v in self.render("period", delivery).items()
                      if v is not None and str(v).strip()}
            if profile.needs_period and not TIME_PART.match(period.get("end", "")):
                raise PermanentError(f"period.end: profile {profile.name} needs a date-time "
                                     "with a time part")
            if period:
                context["period"] = period
        if context:
            resource["context"] = context
        return resource

    def reference(self, option: str, delivery: Delivery) -> str:
        value = str(self.render(option, delivery)).strip()
        if not value:
            raise PermanentError(f"{option}: the reference rendered empty")
        return value

    def body(self, resource: dict[str, Any], conditional: bool) -> tuple[dict[str, str], bytes]:
        headers = self.headers()
        headers["Content-Type"] = FHIR_JSON
        if conditional:
            ident = resource["identifier"][0]
            headers["If-None-Exist"] = "identifier=" + quote(
                f"{ident['system']}|{ident['value']}", safe=":/|")
        return headers, json.dumps(resource, ensure_ascii=False).encode("utf-8")

    @staticmethod
    def headers() -> dict[str, str]:
        return {"Accept": FHIR_JSON, "User-Agent": "suki-relay"}

    # ---------------------------------------------------------------- sending

    def send(self, delivery: Delivery | None, method: str, url: str, **kwargs: Any
             ) -> requests.Response:
        """One request with the credentials; once more after a 401, with a fresh token.
        outbound.NotSent when it never left: no connection, or no token to send it with
        (the token endpoint failing)."""
        headers = kwargs.pop("headers")
        stale: str | None = None
        for _ in range(2):
            if self.credentials is not None:
                try:
                    headers["Authorization"] = self.credentials.authorization(stale)
                except outbound.NotSent:
                    raise
                except RetryableError as exc:  # no token: this request is not sent
                    raise outbound.NotSent(str(exc), exc.retry_after, exc.status) from None
                self._check_scope()
            resp = outbound.send(self.http, method, url, headers=headers,
                                 timeout=self.values["timeout_seconds"], what="FHIR server",
                                 delivery=delivery, **kwargs)
            if resp.status_code != 401 or self.credentials is None \
                    or not self.credentials.refreshable or stale is not None:
                break
            stale = headers["Authorization"]
        return resp

    def _check_scope(self) -> None:
        granted = getattr(self.credentials, "granted_scope", None)
        if granted is not None and not any(_CREATE_SCOPE.match(s) for s in granted.split()):
            raise PermanentError("the EHR granted no scope that allows creating a "
                                 "DocumentReference (e.g. system/DocumentReference.c or "
                                 ".write): register it for the client")

    def deliver(self, delivery: Delivery) -> str | None:
        subject = self.patient_of_encounter(delivery) if self._subject_from_encounter() else None
        resource = self.resource(delivery, subject)
        guard = self.guard()
        if guard == "search":
            found = self.find(resource)
            if found is not None:
                return found
        elif guard == "none" and delivery.taken_over:
            raise InDoubtError("the previous attempt was cut off mid-create and the FHIR server "
                               "offers no DocumentReference search to tell whether it filed")
        headers, body = self.body(resource, conditional=guard == "conditional")
        try:
            resp = self.send(delivery, "POST", self.url, headers=headers, data=body)
        except outbound.NotSent:  # never left (no connection, no token): not stored
            raise
        except RetryableError as exc:  # sent, perhaps stored, no answer
            if guard == "conditional":
                raise
            return self.after_lost(resource, guard, str(exc), exc.status)
        if resp.status_code >= 500 and guard != "conditional":
            return self.after_lost(resource, guard, f"FHIR server answered {resp.status_code}",
                                   resp.status_code)
        return outcome(resp)

    def after_lost(self, resource: dict[str, Any], guard: str, what: str,
                   status: int | None) -> str:
        """A create whose outcome is unknown: look, never blindly send again."""
        if guard == "none":
            raise InDoubtError(f"{what} after the create was sent, and the FHIR server offers "
                               "no DocumentReference search to tell whether it filed",
                               status=status)
        found = self.find(resource)  # a failing search retries: the next attempt looks first
        if found is not None:
            return found
        raise RetryableError(f"{what}; a search found no document: it will be sent again",
                             status=status)

    def guard(self) -> str:
        """conditional (If-None-Exist), search (look before creating) or none."""
        if self.profile.conditional_create is False:
            return "search"
        caps = self.capabilities()
        if caps.conditional_create:
            return "conditional"
        return "search" if caps.search else "none"

    def capabilities(self) -> fhir_guard.Capabilities:
        """The server's CapabilityStatement, cached an hour per base URL and process, read
        by one attempt at a time (the others wait at most timeout_seconds, then read it
        themselves)."""
        caps = fhir_guard.CAPABILITIES.get(self.base)
        if caps is not None:
            return caps
        reader = fhir_guard.CAPABILITIES.reader(self.base)
        waited = reader.acquire(timeout=self.values["timeout_seconds"])
        try:
            caps = fhir_guard.CAPABILITIES.get(self.base)  # read meanwhile by another
            if caps is None:
                caps = self._read_capabilities()
                fhir_guard.CAPABILITIES.put(self.base, caps)
            return caps
        finally:
            if waited:
                reader.release()

    def _read_capabilities(self) -> fhir_guard.Capabilities:
        resp = self.send(None, "GET", self.base + "/metadata", headers=self.headers(),
                         max_reply_bytes=fhir_guard.MAX_METADATA_BYTES)
        if (400 <= resp.status_code < 500 and resp.status_code not in (408, 429)) or \
                resp.status_code == 501:  # declares nothing: the safe guard is a search, or none
            return fhir_guard.Capabilities(False, False, False)
        outbound.raise_for_status(resp, "FHIR server (metadata)")
        if getattr(resp, "cut_off", None) == "size":  # not read as declaring nothing
            raise RetryableError("FHIR server (metadata): the CapabilityStatement is larger "
                                 f"than {fhir_guard.MAX_METADATA_BYTES // 2**20} MiB, the most "
                                 "read; it will be read again", status=resp.status_code)
        outbound.require_whole(resp, "FHIR server (metadata)")
        try:
            return fhir_guard.Capabilities.of(parse_json(resp.content))
        except ValueError:
            return fhir_guard.Capabilities(False, False, False)

    def search_query(self, resource: dict[str, Any]) -> dict[str, str]:
        ident = resource["identifier"][0]
        if self.profile.conditional_create is None and self.capabilities().identifier_search:
            return {"identifier": f"{ident['system']}|{ident['value']}"}
        patient = fhir_guard.reference_id(resource["subject"]["reference"], "Patient")
        if patient is None:
            raise InDoubtError("the subject is not a Patient reference a search can name")
        coding = resource["type"]["coding"][0]
        query = {"patient": patient, "type": f"{coding['system']}|{coding['code']}"}
        encounters = (resource.get("context") or {}).get("encounter") or []
        encounter = fhir_guard.reference_id(encounters[0]["reference"], "Encounter") \
            if encounters else None
        if encounter is not None:
            query["encounter"] = encounter
        return query

    def find(self, resource: dict[str, Any]) -> str | None:
        """The attempt's note if the relay's document is on the server; None if not.
        InDoubtError if a candidate cannot be told apart or pages are left unread (more
        than MAX_PAGES, or a next link to another host); RetryableError if the search
        itself fails."""
        url: str | None = self.url + "?" + urlencode(self.search_query(resource))
        unsure = False
        for page in range(fhir_guard.MAX_PAGES + 1):
            if url is None:
                break
            if not url.startswith(self.base + "/"):  # not followed: the token stays here
                raise InDoubtError("the FHIR server's search continues on another host, not "
                                   "asked: it cannot tell whether this note is filed")
            if page == fhir_guard.MAX_PAGES:  # the note may be on a page not read
                raise InDoubtError(f"the FHIR server's search has more than "
                                   f"{fhir_guard.MAX_PAGES} pages, the most read: it cannot "
                                   "tell whether this note is filed")
            resp = self.send(None, "GET", url, headers=self.headers(),
                             max_reply_bytes=fhir_guard.MAX_SEARCH_BYTES)
            outbound.raise_for_status(resp, "FHIR server (search)", _detail(resp))
            if getattr(resp, "cut_off", None) == "size":
                raise InDoubtError("the FHIR server's search answer is too large to tell "
                                   "whether this note is filed")
            outbound.require_whole(resp, "FHIR server (search)")
            try:
                found, url = fhir_guard.entries(parse_json(resp.content))
            except ValueError:
                raise RetryableError("FHIR server (search) answered with no Bundle") from None
            verdict = fhir_guard.judge(found, resource)
            if verdict.matches:  # filed, whatever the server says of its id
                more = f" ({verdict.matches} documents match)" if verdict.matches > 1 else ""
                named = f"/{verdict.filed}" if verdict.filed else " (no id returned)"
                return f"already filed DocumentReference{named}{more}"
            unsure = unsure or verdict.unsure
        if unsure:
            raise InDoubtError("a document under this patient and type may be this note, and "
                               "the search cannot tell (no date to compare)")
        return None

    def patient_of_encounter(self, delivery: Delivery) -> str:
        """subject: from_encounter: the subject of Encounter/<id>, read with the same
        credentials, remembered a few minutes per encounter."""
        reference = self.reference("encounter", delivery)
        encounter = fhir_guard.reference_id(reference, "Encounter")
        if encounter is None:
            raise PermanentError("encounter: not an Encounter/<id> reference to read the "
                                 "patient from")
        with _PATIENTS_LOCK:
            known = _PATIENTS.get((self.base, encounter))
        if known is not None and known[0] > time.monotonic():
            return known[1]
        resp = self.send(None, "GET", f"{self.base}/Encounter/{encounter}",
                         headers=self.headers())
        if resp.status_code in (404, 410):
            raise PermanentError(f"the FHIR server has no such encounter ({resp.status_code})",
                                 status=resp.status_code)
        outbound.raise_for_status(resp, "FHIR server (encounter)", _detail(resp))
        outbound.require_whole(resp, "FHIR server (encounter)")
        try:
            subject = parse_json(resp.content)["subject"]["reference"]
        except (ValueError, KeyError, TypeError):
            raise PermanentError("the encounter names no subject to file the note under") from None
        patient = fhir_guard.reference_id(subject, "Patient") if isinstance(subject, str) else None
        if patient is None:
            raise PermanentError("the encounter's subject is not a Patient")
        found = f"Patient/{patient}"
        with _PATIENTS_LOCK:
            if len(_PATIENTS) > 10000:  # bounded: the oldest half goes
                for stale in sorted(_PATIENTS, key=lambda k: _PATIENTS[k][0])[:5000]:
                    del _PATIENTS[stale]
            _PATIENTS[(self.base, encounter)] = (time.monotonic() + ENCOUNTER_SECONDS, found)
        return found

    def preview(self, delivery: Delivery) -> dict[str, Any]:
        """What would be sent (nothing is: no metadata read, no search, no encounter)."""
        resource = self.resource(delivery, "Patient/from-encounter"
                                 if self._subject_from_encounter() else None)
        conditional = self.profile.conditional_create is None
        headers, body = self.body(resource, conditional=conditional)
        if self.credentials is not None:
            headers["Authorization"] = MASK
        shown = {"method": "POST", "url": self.url, "headers": mask_secret_keys(headers),
                 "resource": json.loads(body), "profile": self.profile.name}
        if conditional:
            shown["guard"] = ("If-None-Exist if GET /metadata declares conditionalCreate for "
                              "DocumentReference; else a search before each create")
        else:
            shown["guard"] = "a search before each create (GET /DocumentReference?patient=...)"
        return shown


def _detail(resp: requests.Response) -> str:
    codes = issue_codes(resp)
    return f"OperationOutcome issue codes: {', '.join(codes)}" if codes else ""


def outcome(resp: requests.Response) -> str:
    """The attempt's note for a 2xx; otherwise the error to raise (codes only, no text)."""
    code = resp.status_code
    if 200 <= code < 300:
        created = "created" if code == 201 else "already filed" if code == 200 else f"HTTP {code}:"
        found = resource_id(resp)
        return f"{created} DocumentReference/{found}" if found else f"{created} (no id returned)"
    codes = issue_codes(resp)
    detail = f"OperationOutcome issue codes: {', '.join(codes)}" if codes else ""
    if code in (401, 403):
        raise PermanentError(f"FHIR server refused the credentials ({code})"
                             + (f": {detail}" if detail else ""), status=code)
    if code == 412:
        raise PermanentError("FHIR server answered 412: several documents already have this "
                             "identifier" + (f"; {detail}" if detail else ""), status=code)
    outbound.raise_for_status(resp, "FHIR server", detail)
    raise PermanentError(f"FHIR server answered {code}", status=code)  # pragma: no cover


def resource_id(resp: requests.Response) -> str | None:
    """The id from the answer's body, else from its Location (…/DocumentReference/ID/…)."""
    try:
        body = parse_json(resp.content)
    except ValueError:
        body = None
    found = body.get("id") if isinstance(body, dict) and \
        body.get("resourceType") == "DocumentReference" else None
    if not isinstance(found, str):
        location = resp.headers.get("Location") or resp.headers.get("Content-Location") or ""
        match = re.search(r"DocumentReference/([^/?#]+)", location)
        found = match.group(1) if match else None
    return found if isinstance(found, str) and _ID.fullmatch(found) else None


def issue_codes(resp: requests.Response) -> list[str]:
    """The issue codes of an OperationOutcome answer (never its diagnostics or details)."""
    try:
        body = parse_json(resp.content)
    except ValueError:
        return []
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return []
    issues = body.get("issue")
    codes = [i.get("code") for i in issues if isinstance(i, dict)] if isinstance(issues, list) else []
    return list(dict.fromkeys(c for c in codes if isinstance(c, str) and c in ISSUE_CODES))[:5]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")
