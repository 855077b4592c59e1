"""A FHIR server stand-in on 127.0.0.1: DocumentReference conditional create
(If-None-Exist) and an OAuth2 client-credentials token endpoint.

Every resource POSTed is validated with the fhir.resources R4B models; failures are
recorded by location and type only (never the values, which would be PHI).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import parse_qs

from fhir.resources.R4B.documentreference import DocumentReference
from pydantic import ValidationError

from suki_relay.testing import Received, Reply, Sink

CLIENT_ID = "relay-client"
CLIENT_SECRET = "CLIENT-SECRET-7f3a"


def outcome(status: int, code: str, diagnostics: str = "") -> Reply:
    issue: dict[str, Any] = {"severity": "error", "code": code}
    if diagnostics:
        issue["diagnostics"] = diagnostics
    return Reply(status, json.dumps({"resourceType": "OperationOutcome",
                                     "issue": [issue]}).encode(),
                 {"Content-Type": "application/fhir+json"})


class FhirStandIn:
    def __init__(self, token_lifetime: float = 3600.0, lifetime: float = 120.0):
        self.token_lifetime = token_lifetime
        self.documents: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, float] = {}  # live access token -> expiry (monotonic)
        self.issued = 0
        self.token_requests: list[Received] = []
        self.posts: list[Received] = []
        self.unauthorized = 0  # 401s answered
        self.invalid: list[list[tuple[Any, str]]] = []  # R4B validation failures
        self.lose_answers = 0  # store the next N creates, then answer 500 as if lost
        self.scripted: list[Reply] = []  # answered to the next POSTs before anything else
        self.sink = Sink(handler=self.handle, lifetime=lifetime)
        self.base_url = self.sink.url + "/fhir/r4"
        self.token_url = self.sink.url + "/oauth/token"

    def oauth(self, **extra: Any) -> dict[str, Any]:
        return {"token_url": self.token_url, "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET, "scope": "system/DocumentReference.write",
                **extra}

    def revoke_tokens(self) -> None:
        with self.sink._lock:
            self.tokens.clear()

    def handle(self, got: Received) -> Reply:
        headers = {k.lower(): v for k, v in got.headers.items()}
        if got.path == "/oauth/token":
            return self.token(got, headers)
        if got.method == "POST" and got.path == "/fhir/r4/DocumentReference":
            return self.create(got, headers)
        return outcome(404, "not-found")

    def token(self, got: Received, headers: dict[str, str]) -> Reply:
        self.token_requests.append(got)
        form = {k: v[0] for k, v in parse_qs(got.body.decode()).items()}
        basic = headers.get("authorization", "")
        if basic.startswith("Basic "):
            client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if form.get("grant_type") != "client_credentials":
            return Reply(400, b'{"error": "unsupported_grant_type"}')
        if (client_id, secret) != (CLIENT_ID, CLIENT_SECRET):
            return Reply(401, b'{"error": "invalid_client", "error_description": "nope"}')
        self.issued += 1
        token = f"ACCESS-TOKEN-{self.issued}-c0ffee"
        self.tokens[token] = time.monotonic() + self.token_lifetime
        return Reply(200, json.dumps({"access_token": token, "token_type": "Bearer",
                                      "expires_in": self.token_lifetime}).encode(),
                     {"Content-Type": "application/json"})

    def create(self, got: Received, headers: dict[str, str]) -> Reply:
        self.posts.append(got)
        if self.scripted:
            return self.scripted.pop(0)
        auth = headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if self.tokens.get(token, 0.0) <= time.monotonic():
            self.unauthorized += 1
            return outcome(401, "login")
        if headers.get("content-type") != "application/fhir+json":
            return outcome(415, "not-supported")
        resource = json.loads(got.body)
        try:
            DocumentReference.model_validate(resource)
        except ValidationError as exc:
            self.invalid.append([(e["loc"], e["type"]) for e in exc.errors()])
            return outcome(400, "structure")
        wanted = parse_qs(headers.get("if-none-exist", "")).get("identifier", [""])[0]
        system, _, value = wanted.partition("|")
        matches = [d for d in self.documents.values() if any(
            i.get("system") == system and i.get("value") == value
            for i in d.get("identifier", []))] if wanted else []
        if len(matches) > 1:
            return outcome(412, "duplicate", "PHI-DIAGNOSTICS several documents match")
        if matches:
            return Reply(200, json.dumps(matches[0]).encode(),
                         {"Content-Type": "application/fhir+json"})
        resource["id"] = str(len(self.documents) + 1)
        self.documents[resource["id"]] = resource
        if self.lose_answers:
            self.lose_answers -= 1
            return outcome(500, "exception")
        return Reply(201, json.dumps(resource).encode(),
                     {"Content-Type": "application/fhir+json",
                      "Location": f"{self.base_url}/DocumentReference/{resource['id']}/_history/1"})

    def stop(self) -> None:
        self.sink.stop()
