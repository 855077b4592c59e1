"""A FHIR server stand-in on 127.0.0.1 that behaves as the EHRs the relay files into,
flaws included: ``generic`` (conditional create, as its CapabilityStatement says),
``epic`` (no conditional create, identifiers not kept, an existing encounter of the
patient required, only the first attachment read, 201 with an empty body and a relative
Location) and ``oracle`` (unsupported fields dropped, the identifier among them;
context.period with a timed end, a charset, one attachment, LOINC or code set 72; 201
with an empty body, an absolute Location and an ETag).

Its token endpoint takes a client secret, or a SMART Backend Services client assertion
that it verifies against the client's JWK Set URL (signature, alg, kid, iss = sub, aud,
exp at most five minutes ahead, a jti never seen before). Faults on demand: store the
next creates and then answer 500 (``lose_answers``), hang up (``drop_after_store``) or
answer too late (``late_after_store``); page search results (``page_size``, newest first).

Every resource POSTed is validated with the fhir.resources R4B models when they are
installed (the dev extra); failures are recorded by location and type only (never the
values, which would be PHI). Used by the tests and by ``suki-relay stand-in fhir``.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from suki_relay.testing_servers import Received, Reply, Sink, StandIn

CLIENT_ID = "relay-client"
CLIENT_SECRET = "CLIENT-SECRET-7f3a"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
LOINC = "http://loinc.org"
CODE_SET_72 = re.compile(r"^https?://fhir\.cerner\.com/[^/]+/codeSet/72$")
TIMED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")
ORACLE_TENANT = "ec2458f2-1e24-41c8-b71b-0e701af7583d"
# what Oracle's create keeps ("Only the body fields mentioned below are supported.
# Unsupported fields are ignored."): no identifier, no category
ORACLE_FIELDS = ("resourceType", "status", "docStatus", "type", "subject", "author",
                 "authenticator", "date", "description", "content", "context")
PATHS = {"generic": ("/fhir/r4", "/oauth/token"),
         "epic": ("/api/FHIR/R4", "/oauth2/token"),
         "oracle": (f"/r4/{ORACLE_TENANT}",
                    f"/tenants/{ORACLE_TENANT}/protocols/oauth2/profiles/smart-v1/token")}
PROFILES = tuple(PATHS)


def outcome(status: int, code: str, diagnostics: str = "") -> Reply:
    issue: dict[str, Any] = {"severity": "error", "code": code}
    if diagnostics:
        issue["diagnostics"] = diagnostics
    return Reply(status, json.dumps({"resourceType": "OperationOutcome",
                                     "issue": [issue]}).encode(),
                 {"Content-Type": "application/fhir+json"})


def _other_resource(number: int) -> dict[str, Any]:
    """A resource entry such as fill a large EHR's CapabilityStatement (about 1.6 KB)."""
    return {"type": f"Basic{number}", "profile": f"http://example.org/StructureDefinition/{number}",
            "interaction": [{"code": c} for c in ("read", "vread", "search-type")],
            "searchParam": [{"name": f"param-{n}", "type": "token",
                             "documentation": "A search parameter this server offers."}
                            for n in range(16)]}


def _validator() -> Any:
    try:
        from fhir.resources.R4B.documentreference import DocumentReference
    except ImportError:
        return None
    return DocumentReference


class FhirStandIn(StandIn):
    def __init__(self, profile: str = "generic", *, conditional_create: bool | None = None,
                 search: bool = True, token_lifetime: float = 3600.0,
                 lifetime: float | None = 120.0, jwks_url: str | None = None,
                 jwks: dict[str, Any] | None = None,
                 granted_scope: str = "system/DocumentReference.write system/Encounter.read",
                 encounters: dict[str, str] | None = None, capability_bytes: int = 0,
                 page_size: int = 0, port: int = 0):
        if profile not in PATHS:
            raise ValueError(f"profile: expected one of {', '.join(PATHS)}")
        self.profile = profile
        # generic declares (and honours) conditional create unless told otherwise
        self.conditional_create = (profile == "generic") if conditional_create is None \
            else conditional_create and profile == "generic"
        self.search = search
        self.token_lifetime = token_lifetime
        self.jwks_url, self.jwks = jwks_url, jwks
        self.granted_scope = granted_scope
        self.encounters: dict[str, str] = dict(encounters or {})  # encounter id -> patient id
        self.documents: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, float] = {}  # live access token -> expiry (monotonic)
        self.issued = 0
        self.token_requests: list[Received] = []
        self.assertions: list[dict[str, Any]] = []  # verified assertion claims
        self.jtis: set[str] = set()
        self.refused_tokens: list[str] = []  # why each refused token request was refused
        self.posts: list[Received] = []
        self.searches: list[Received] = []
        self.reads: list[Received] = []  # Encounter reads
        self.unauthorized = 0  # 401s answered
        self.invalid: list[list[tuple[Any, str]]] = []  # R4B validation failures
        self.refused: list[tuple[int, str]] = []  # creates refused: (status, why)
        self.lose_answers = 0  # store the next N creates, then answer 500
        self.drop_after_store = 0  # store the next N creates, then hang up
        self.late_after_store = 0.0  # store the next create, then answer after this long
        self.scripted: list[Reply] = []  # answered to the next POSTs before anything else
        self.metadata_status = 200  # another status: /metadata refuses with it
        self.token_status = 200  # another status: the token endpoint fails with it (503 ...)
        # /metadata lists this many bytes of other resources around DocumentReference, as
        # a large EHR's does; streamed as made (a statement past any bound costs nothing)
        self.capability_bytes = capability_bytes
        self.metadata_reads = 0
        # a search answers this many documents a page, newest first, with a next link as
        # real servers page (0: every match on one page)
        self.page_size = page_size
        self.next_base: str | None = None  # another base for next links (default: ours)
        self.validator = _validator()
        self._lock = threading.RLock()
        self.sink = Sink(handler=self.handle, lifetime=lifetime, port=port)
        base, token = PATHS[profile]
        self.base_path = base
        self.base_url = self.sink.url + base
        self.token_path = token
        self.token_url = self.sink.url + token

    # ---------------------------------------------------------------- set up

    def oauth(self, **extra: Any) -> dict[str, Any]:
        """An ``auth:`` mapping with the client secret."""
        return {"token_url": self.token_url, "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET, "scope": "system/DocumentReference.write",
                **extra}

    def smart(self, key_file: str, **extra: Any) -> dict[str, Any]:
        """An ``auth:`` mapping for SMART Backend Services with this key file."""
        return {"token_url": self.token_url, "client_id": CLIENT_ID,
                "private_key_file": key_file,
                "scope": "system/DocumentReference.write system/Encounter.read", **extra}

    def add_encounter(self, encounter_id: str, patient_id: str) -> None:
        self.encounters[encounter_id] = patient_id

    def revoke_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    def stop(self) -> None:
        self.sink.stop()

    # ---------------------------------------------------------------- requests

    def handle(self, got: Received) -> Reply:
        with self._lock:
            return self._handle(got)

    def _handle(self, got: Received) -> Reply:
        headers = {k.lower(): v for k, v in got.headers.items()}
        parts = urlsplit(got.path)
        path, query = parts.path, parse_qs(parts.query)
        if path == self.token_path and got.method == "POST":
            return self.token(got, headers)
        if not path.startswith(self.base_path + "/"):
            return outcome(404, "not-found")
        rest = path[len(self.base_path) + 1:]
        if rest == "metadata" and got.method == "GET":
            self.metadata_reads += 1
            if self.metadata_status != 200:
                return outcome(self.metadata_status, "login")
            if self.capability_bytes:
                return Reply(200, headers={"Content-Type": "application/fhir+json"},
                             stream=self.large_statement)
            return self.json(200, self.capability_statement())
        auth = headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if rest == "DocumentReference" and got.method == "POST":
            self.posts.append(got)
            if self.scripted:
                return self.scripted.pop(0)
        if self.tokens.get(token, 0.0) <= time.monotonic():
            self.unauthorized += 1
            return outcome(401, "login")
        if rest == "DocumentReference" and got.method == "POST":
            return self.create(got, headers)
        if rest == "DocumentReference" and got.method == "GET":
            self.searches.append(got)
            if not self.search:
                return outcome(405, "not-supported")
            return self.json(200, self.searchset(query))
        if rest.startswith("Encounter/") and got.method == "GET":
            self.reads.append(got)
            encounter = rest.split("/", 1)[1]
            if encounter not in self.encounters:
                return outcome(404, "not-found")
            return self.json(200, {"resourceType": "Encounter", "id": encounter,
                                   "status": "finished",
                                   "class": {"system": "http://terminology.hl7.org/CodeSystem/"
                                                       "v3-ActCode", "code": "AMB"},
                                   "subject": {"reference": f"Patient/{self.encounters[encounter]}"}})
        return outcome(404, "not-found")

    @staticmethod
    def json(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
        return Reply(status, json.dumps(body).encode(),
                     {"Content-Type": "application/fhir+json", **(headers or {})})

    def capability_statement(self) -> dict[str, Any]:
        interactions = [{"code": "create"}, {"code": "read"}]
        if self.search:
            interactions.append({"code": "search-type"})
        resource: dict[str, Any] = {"type": "DocumentReference", "interaction": interactions,
                                    "conditionalCreate": self.conditional_create,
                                    "searchParam": [{"name": n, "type": t} for n, t in (
                                        ("patient", "reference"), ("encounter", "reference"),
                                        ("type", "token"))]}
        if self.profile == "generic" and self.search:
            resource["searchParam"].append({"name": "identifier", "type": "token"})
        return {"resourceType": "CapabilityStatement", "status": "active",
                "date": "2026-01-01", "kind": "instance", "fhirVersion": "4.0.1",
                "format": ["json"], "rest": [{"mode": "server", "resource": [resource]}]}

    def large_statement(self) -> Iterator[bytes]:
        """The CapabilityStatement with ``capability_bytes`` of other resources listed,
        half before DocumentReference and half after, in chunks of about 64 KiB."""
        statement = self.capability_statement()
        (ours,) = statement["rest"][0]["resource"]
        statement["rest"][0]["resource"] = ["@"]
        head, tail = json.dumps(statement).split('"@"')
        yield head.encode()
        made, number, chunk = 0, 0, []
        for half in (1, 2):
            while made < self.capability_bytes * half // 2:
                entry = json.dumps(_other_resource(number)).encode() + b", "
                number += 1
                made += len(entry)
                chunk.append(entry)
                if len(chunk) >= 40:
                    yield b"".join(chunk)
                    chunk = []
            if half == 1:
                chunk.append(json.dumps(ours).encode() + b", ")
        yield b"".join(chunk).removesuffix(b", ") + tail.encode()

    # ---------------------------------------------------------------- tokens

    def token(self, got: Received, headers: dict[str, str]) -> Reply:
        self.token_requests.append(got)
        if self.token_status != 200:
            return Reply(self.token_status, b'{"error": "temporarily_unavailable"}',
                         {"Content-Type": "application/json"})
        form = {k: v[0] for k, v in parse_qs(got.body.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return self._refuse_token("unsupported_grant_type", 400)
        if "client_assertion" in form or "client_assertion_type" in form:
            why = self.verify_assertion(form)
            if why:
                return self._refuse_token("invalid_client", 401, why)
        else:
            basic = headers.get("authorization", "")
            if basic.startswith("Basic "):
                client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
            else:
                client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
            if self.profile != "generic":
                return self._refuse_token("invalid_client", 401, "a client secret: this EHR "
                                          "registers backend clients by JWK Set URL only")
            if (client_id, secret) != (CLIENT_ID, CLIENT_SECRET):
                return self._refuse_token("invalid_client", 401, "wrong client secret")
        self.issued += 1
        token = f"ACCESS-TOKEN-{self.issued}-c0ffee"
        self.tokens[token] = time.monotonic() + self.token_lifetime
        return Reply(200, json.dumps({"access_token": token, "token_type": "Bearer",
                                      "expires_in": self.token_lifetime,
                                      "scope": self.granted_scope}).encode(),
                     {"Content-Type": "application/json"})

    def _refuse_token(self, code: str, status: int, why: str = "") -> Reply:
        self.refused_tokens.append(why or code)
        return Reply(status, json.dumps({"error": code, "error_description": "nope"}).encode(),
                     {"Content-Type": "application/json"})

    def verify_assertion(self, form: dict[str, str]) -> str:
        """Why the client assertion is refused ("" if it is good)."""
        import jwt

        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return "client_assertion_type"
        assertion = form.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return "not a JWT"
        if header.get("alg") not in ("RS384", "ES384"):
            return f"alg {header.get('alg')}"
        if not header.get("kid"):
            return "no kid"
        if header.get("jku") is not None and header["jku"] != self.jwks_url:
            return "jku is not the registered JWK Set URL"
        keys = self._jwk_set()
        match = [k for k in keys.get("keys", []) if k.get("kid") == header["kid"]]
        if not match:
            return "kid not in the JWK Set"
        try:
            key = jwt.PyJWK(match[0]).key
            claims = jwt.decode(assertion, key, algorithms=[header["alg"]],
                                audience=self.token_url, issuer=CLIENT_ID,
                                options={"require": ["exp", "jti", "sub", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            return "expired"
        except jwt.InvalidAudienceError:
            return "aud"
        except jwt.InvalidSignatureError:
            return "signature"
        except jwt.PyJWTError as exc:
            return type(exc).__name__
        if claims.get("sub") != CLIENT_ID:
            return "sub"
        if claims["exp"] > time.time() + 300 + 5:
            return "exp more than 5 minutes ahead"
        if claims["jti"] in self.jtis:
            return "jti reused"
        self.jtis.add(claims["jti"])
        self.assertions.append({"header": header, "claims": claims})
        return ""

    def _jwk_set(self) -> dict[str, Any]:
        if self.jwks is not None:
            return self.jwks
        if self.jwks_url is None:
            return {"keys": []}
        import requests

        if urlsplit(self.jwks_url).hostname not in ("127.0.0.1", "::1", "localhost"):
            return {"keys": []}  # a stand-in only ever talks to this machine
        try:
            return dict(requests.get(self.jwks_url, timeout=5).json())
        except (requests.RequestException, ValueError):
            return {"keys": []}

    # ---------------------------------------------------------------- documents

    def searchset(self, query: dict[str, list[str]]) -> dict[str, Any]:
        def wanted(doc: dict[str, Any]) -> bool:
            for name, values in query.items():
                value = values[0]
                if name == "patient" and doc.get("subject", {}).get("reference", "").split(
                        "/")[-1] != value.split("/")[-1]:
                    return False
                if name == "encounter" and value.split("/")[-1] not in [
                        e.get("reference", "").split("/")[-1]
                        for e in (doc.get("context") or {}).get("encounter") or []]:
                    return False
                if name == "type":
                    system, _, code = value.rpartition("|")
                    if not any(c.get("code") == code and (not system or c.get("system") == system)
                               for c in (doc.get("type") or {}).get("coding") or []):
                        return False
                if name == "identifier":
                    system, _, ident = value.rpartition("|")
                    if not any(i.get("value") == ident and (not system or i.get("system") == system)
                               for i in doc.get("identifier") or []):
                        return False
            return True

        found = [d for d in self.documents.values() if wanted(d)]
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                                  "total": len(found)}
        if self.page_size:
            page = int(query.pop("_page", ["0"])[0])
            found = found[::-1][page * self.page_size:(page + 1) * self.page_size + 1]
            if len(found) > self.page_size:
                found = found[:-1]
                following = urlencode({k: v[0] for k, v in query.items()} | {"_page": page + 1})
                bundle["link"] = [{"relation": "next", "url": f"{self.next_base or self.base_url}"
                                                              f"/DocumentReference?{following}"}]
        bundle["entry"] = [{"fullUrl": f"{self.base_url}/DocumentReference/{d.get('id')}",
                            "resource": d, "search": {"mode": "match"}} for d in found]
        return bundle

    def create(self, got: Received, headers: dict[str, str]) -> Reply:
        if headers.get("content-type", "").split(";")[0].strip() != "application/fhir+json":
            return self._refuse(415, "not-supported", "content type")
        try:
            resource = json.loads(got.body)
        except ValueError:
            return self._refuse(400, "structure", "not JSON")
        if self.validator is not None:
            from pydantic import ValidationError

            try:
                self.validator.model_validate(resource)
            except ValidationError as exc:
                self.invalid.append([(e["loc"], e["type"]) for e in exc.errors()])
                return self._refuse(400, "structure", "R4B validation")
        refusal = {"generic": lambda r: None, "epic": self.epic_refusal,
                   "oracle": self.oracle_refusal}[self.profile](resource)
        if refusal is not None:
            return self._refuse(422, *refusal)
        if self.profile == "generic" and self.conditional_create:
            wanted = parse_qs(headers.get("if-none-exist", "")).get("identifier", [""])[0]
            system, _, value = wanted.partition("|")
            matches = [d for d in self.documents.values() if any(
                i.get("system") == system and i.get("value") == value
                for i in d.get("identifier", []))] if wanted else []
            if len(matches) > 1:
                return outcome(412, "duplicate", "PHI-DIAGNOSTICS several documents match")
            if matches:
                return self.json(200, matches[0])
        stored = self.stored_form(resource)
        stored["id"] = self.new_id()
        self.documents[stored["id"]] = stored
        if self.lose_answers:
            self.lose_answers -= 1
            return outcome(500, "exception")
        if self.drop_after_store:
            self.drop_after_store -= 1
            return Reply(drop=True)
        delay, self.late_after_store = self.late_after_store, 0.0
        if self.profile == "epic":
            return Reply(201, b"", {"Location": f"DocumentReference/{stored['id']}"}, delay=delay)
        if self.profile == "oracle":
            return Reply(201, b"", {"Location": f"{self.base_url}/DocumentReference/{stored['id']}",
                                    "ETag": 'W/"0"'}, delay=delay)
        return Reply(201, json.dumps(stored).encode(),
                     {"Content-Type": "application/fhir+json",
                      "Location": f"{self.base_url}/DocumentReference/{stored['id']}/_history/1"},
                     delay=delay)

    def _refuse(self, status: int, code: str, why: str) -> Reply:
        self.refused.append((status, why))
        return outcome(status, code, f"PHI-DIAGNOSTICS {why}")

    def new_id(self) -> str:
        n = len(self.documents) + 1
        return {"epic": f"eDoc{n:04d}", "oracle": f"{197000000 + n}"}.get(self.profile, str(n))

    def stored_form(self, resource: dict[str, Any]) -> dict[str, Any]:
        """What the server keeps of what it was sent."""
        if self.profile == "epic":
            kept = {k: v for k, v in resource.items() if k != "identifier"}
            kept["content"] = resource["content"][:1]  # only the first attachment is read
            return kept
        if self.profile == "oracle":
            return {k: v for k, v in resource.items() if k in ORACLE_FIELDS}
        return dict(resource)

    def epic_refusal(self, r: dict[str, Any]) -> tuple[str, str] | None:
        subject = (r.get("subject") or {}).get("reference", "")
        if not re.fullmatch(r"Patient/[A-Za-z0-9\-.]{1,64}", subject):
            return "invalid", "subject is not a relative Patient reference"
        if r.get("status") != "current":
            return "value", "status"
        if r.get("docStatus") not in ("final", "preliminary"):
            return "value", "docStatus"
        encounters = (r.get("context") or {}).get("encounter") or []
        if not encounters:
            return "required", "context.encounter is required"
        encounter = encounters[0].get("reference", "").split("/")[-1]
        if self.encounters.get(encounter) != subject.split("/")[-1]:
            return "processing", "no such encounter for this patient"
        attachment = r["content"][0]["attachment"]
        if attachment.get("contentType") != "text/plain" or not attachment.get("data"):
            return "value", "the first attachment is not text/plain data"
        return None

    def oracle_refusal(self, r: dict[str, Any]) -> tuple[str, str] | None:
        subject = (r.get("subject") or {}).get("reference", "")
        if not subject.startswith("Patient/"):
            return "invalid", "subject must be a Patient"
        if r.get("status") != "current":
            return "value", "status"
        if r.get("docStatus") not in ("final", "amended"):
            return "value", "docStatus"
        context = r.get("context") or {}
        if len(context.get("encounter") or []) > 1:
            return "value", "at most one encounter"
        period = context.get("period") or {}
        if not TIMED.match(period.get("end", "")):
            return "required", "context.period.end with a time part is required"
        for when in (r.get("date"), period.get("start")):
            if when is not None and not TIMED.match(when):
                return "value", "a date without a time part"
        if len(r.get("content") or []) != 1:
            return "value", "exactly one content entry"
        if "charset=" not in r["content"][0]["attachment"].get("contentType", "").replace(" ", ""):
            return "value", "contentType without a charset"
        systems = {c.get("system") for c in (r.get("type") or {}).get("coding") or []}
        loinc, own = LOINC in systems, any(CODE_SET_72.match(str(s)) for s in systems)
        if loinc == own:
            return "code-invalid", "type: a LOINC code or one of code set 72, one of them"
        return None
