"""``fhir``: file the note in an EHR as a FHIR R4 DocumentReference.

The note (the ``contents`` document, or ``encounter_content``) is fetched by the core like
any ``fetch:``, turned into plain text, and POSTed as a DocumentReference to
``{base_url}/DocumentReference`` with ``If-None-Exist: identifier=<system>|<session id>``:
a retry, a replay or a second relay never files a second document (conditional create).

Outcomes: 201 or 200 is done (the attempt's note records the resource id); 412 (several
documents match) and every other 4xx fail for good; 429, 5xx and timeouts retry. Errors
name only the status and the OperationOutcome issue codes: an OperationOutcome's
diagnostics text can quote the resource, which is protected health information.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from typing import Any
from urllib.parse import quote

import requests

from suki_relay.plugin import (
    CONTENT_RELATIONS,
    MASK,
    Action,
    Delivery,
    Option,
    PermanentError,
    mask_secret_keys,
    note_text,
    oauth,
    outbound,
)

LOINC = "http://loinc.org"
DEFAULT_TYPE = {"code": "11506-3", "display": "Progress note"}
DEFAULT_IDENTIFIER_SYSTEM = "urn:suki:session-id"
FHIR_JSON = "application/fhir+json"
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR's id datatype
# FHIR R4's IssueType value set: only these are repeated from a server's answer, so a
# server cannot put free text (possibly PHI) into an error message by calling it a code
ISSUE_CODES = frozenset((
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown",
    "expired", "forbidden", "suppressed", "processing", "not-supported", "duplicate",
    "multiple-matches", "not-found", "deleted", "too-long", "code-invalid", "extension",
    "too-costly", "business-rule", "conflict", "transient", "lock-error", "no-store",
    "exception", "timeout", "incomplete", "throttled", "informational"))
_TYPE_KEYS = ("code", "display", "system")


class FhirAction(Action):
    description = "file the note in an EHR as a FHIR R4 DocumentReference"
    options = {
        "base_url": Option(str, required=True, template=False,
                           help="the FHIR server's base URL, e.g. https://ehr.example.org/fhir/r4"),
        "subject": Option(str, required=True,
                          help='a reference template, e.g. "Patient/{{ event.additional_info'
                               '.patient_id }}"'),
        "encounter": Option(str, help="context.encounter reference template"),
        "author": Option(str, help="author reference template, e.g. Practitioner/..."),
        "document_type": Option(dict, default=DEFAULT_TYPE, template=False,
                                help="{code, display} (LOINC; `system` to use another)"),
        "title": Option(str, help="the attachment's title; default: the type's display"),
        "identifier_system": Option(str, default=DEFAULT_IDENTIFIER_SYSTEM, template=False,
                                    help="the identifier system the session id is filed under"),
        "note": Option(str, default="contents", choices=CONTENT_RELATIONS, template=False,
                       help="which Suki content document is the note"),
        "attach_json": Option(bool, default=False, template=False,
                              help="also attach the content document as application/json"),
        "auth": Option(dict, secret=True, template=False,
                       help="{bearer: TOKEN} or {token_url, client_id, client_secret, scope}"),
        "timeout_seconds": Option(float, default=20.0, template=False,
                                  help="bounds each whole request (the token endpoint's too)"),
    }

    @property
    def url(self) -> str:
        return str(self.values["base_url"]).rstrip("/") + "/DocumentReference"

    @functools.cached_property
    def credentials(self) -> oauth.Bearer | oauth.Tokens | None:
        """Shared per process with every action that names the same client (oauth's cache)."""
        return oauth.credentials(self.values["auth"], self.values["timeout_seconds"])

    def check(self) -> list[str]:
        problems = []
        if not str(self.values["base_url"]).startswith(("http://", "https://")):
            problems.append("base_url: expected an http:// or https:// URL")
        kind = self.values["document_type"]
        if not isinstance(kind.get("code"), str) or not kind["code"] or any(
                k not in _TYPE_KEYS or not isinstance(v, str) for k, v in kind.items()):
            problems.append("document_type: expected {code: ..., display: ...} (strings; "
                            f"optional system, default {LOINC})")
        if self.values["auth"] is not None:
            problems += oauth.auth_problems(self.values["auth"])
        if not 0 < self.values["timeout_seconds"] <= 300:
            problems.append("timeout_seconds: expected more than 0 and at most 300")
        return problems

    def fetches(self) -> tuple[str, ...]:
        return (self.values["note"],)

    # ---------------------------------------------------------------- the resource

    def resource(self, delivery: Delivery) -> dict[str, Any]:
        """The DocumentReference for this delivery, as plain dicts."""
        session = delivery.event.get("session_id") if isinstance(delivery.event, dict) else None
        if not isinstance(session, str) or not session:
            raise PermanentError("the event has no session_id to identify the document by")
        document = delivery.fetched[self.values["note"]]
        kind = self.values["document_type"]
        display = kind.get("display") or kind["code"]
        title = self.render("title", delivery) or display
        resource: dict[str, Any] = {
            "resourceType": "DocumentReference",
            "identifier": [{"system": self.values["identifier_system"], "value": session}],
            "status": "current",
            "docStatus": "final",
            "type": {"coding": [{"system": kind.get("system", LOINC), "code": kind["code"],
                                 "display": display}], "text": display},
            "subject": {"reference": self.reference("subject", delivery)},
            "date": delivery.received_at,
        }
        if self.values["author"] is not None:
            resource["author"] = [{"reference": self.reference("author", delivery)}]
        attachments = [{"contentType": "text/plain; charset=utf-8",
                        "data": _b64(note_text(document, empty_ok=False)), "title": title}]
        if self.values["attach_json"]:
            attachments.append({"contentType": "application/json",
                                "data": _b64(json.dumps(document, ensure_ascii=False)),
                                "title": f"{title} (Suki content, JSON)"})
        resource["content"] = [{"attachment": a} for a in attachments]
        if self.values["encounter"] is not None:
            resource["context"] = {"encounter": [{"reference": self.reference("encounter",
                                                                             delivery)}]}
        return resource

    def reference(self, option: str, delivery: Delivery) -> str:
        value = str(self.render(option, delivery)).strip()
        if not value:
            raise PermanentError(f"{option}: the reference rendered empty")
        return value

    def request(self, delivery: Delivery) -> tuple[dict[str, str], bytes]:
        resource = self.resource(delivery)
        system, session = resource["identifier"][0]["system"], resource["identifier"][0]["value"]
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "User-Agent": "suki-relay",
                   "If-None-Exist": "identifier=" + quote(f"{system}|{session}", safe=":/|")}
        return headers, json.dumps(resource, ensure_ascii=False).encode("utf-8")

    # ---------------------------------------------------------------- sending

    def deliver(self, delivery: Delivery) -> str | None:
        headers, body = self.request(delivery)
        stale: str | None = None
        for _ in range(2):  # once more after a 401, with a fresh token
            if self.credentials is not None:
                headers["Authorization"] = self.credentials.authorization(stale)
            resp = outbound.send(self.http, "POST", self.url, headers=headers,
                                 data=body, timeout=self.values["timeout_seconds"],
                                 what="FHIR server", delivery=delivery)
            if resp.status_code != 401 or self.credentials is None \
                    or not self.credentials.refreshable or stale is not None:
                break
            stale = headers["Authorization"]
        return outcome(resp)

    def preview(self, delivery: Delivery) -> dict[str, Any]:
        headers, body = self.request(delivery)
        if self.credentials is not None:
            headers["Authorization"] = MASK
        return {"method": "POST", "url": self.url, "headers": mask_secret_keys(headers),
                "resource": json.loads(body)}


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
        body = resp.json()
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
        body = resp.json()
    except ValueError:
        return []
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return []
    codes = [i.get("code") for i in body.get("issue") or [] if isinstance(i, dict)]
    return list(dict.fromkeys(c for c in codes if isinstance(c, str) and c in ISSUE_CODES))[:5]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")
