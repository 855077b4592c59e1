"""Filed once: what the fhir action asks the server before (and after) a create.

Where the server honours ``If-None-Exist`` (a generic server whose CapabilityStatement
declares conditionalCreate for DocumentReference) the create itself is the guard. Where it
does not (Epic, Oracle Health, most servers), the action searches before every create for
a document it filed already, and after a create whose answer was lost; it creates only when
the search shows none. A document is the relay's when it carries the session identifier;
where the server drops identifiers, when it has the same type and the same ``date`` (the
event's reception time, to the second), under the patient (and encounter) searched. A
candidate that cannot be told either way (no date) makes the outcome unknown, as do pages
of results left unread and a server that offers no DocumentReference search at all: the
delivery then waits as ``unknown`` for an operator instead of risking a second note in
the chart.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR's id datatype
CAPABILITY_SECONDS = 3600.0  # how long a server's CapabilityStatement is trusted
MAX_PAGES = 5  # search result pages read; more left unread is in doubt, not "none found"
MAX_SEARCH_BYTES = 64 * 1024 * 1024  # a page of notes with their text inline can be large
MAX_METADATA_BYTES = 32 * 1024 * 1024
"""The most of a CapabilityStatement read. Real servers' run to several MiB (Epic's and
Oracle Health's list every resource, operation and search parameter they offer), and the
relay's ceiling for a target's reply (1 MiB) would fail every note to such a server for
good; 32 MiB is several times the largest seen, below a search page's bound (which a
worker holds already), and read once an hour per server, by one attempt at a time."""


@dataclass(frozen=True)
class Capabilities:
    conditional_create: bool  # If-None-Exist honoured for DocumentReference
    search: bool  # DocumentReference search-type offered
    identifier_search: bool  # ... with the identifier parameter

    @classmethod
    def of(cls, statement: Any) -> Capabilities:
        """From a CapabilityStatement (anything else, or any part not shaped as FHIR
        says, declares nothing)."""
        none = cls(False, False, False)
        if _dict(statement).get("resourceType") != "CapabilityStatement":
            return none
        for rest in _dicts(statement.get("rest")):
            if rest.get("mode", "server") != "server":
                continue
            for res in _dicts(rest.get("resource")):
                if res.get("type") == "DocumentReference":
                    codes = {_str(i.get("code")) for i in _dicts(res.get("interaction"))}
                    params = {_str(p.get("name")) for p in _dicts(res.get("searchParam"))}
                    search = "search-type" in codes
                    return cls(res.get("conditionalCreate") is True and "create" in codes,
                               search, search and "identifier" in params)
        return none


class CapabilityCache:
    """Per base URL, per process: one GET [base]/metadata an hour."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, Capabilities]] = {}
        self._reading: dict[str, threading.Lock] = {}

    def reader(self, base_url: str) -> threading.Lock:
        """Held while one attempt reads the server's statement, so that the attempts
        waiting for it read the cache instead of holding a large statement each."""
        with self._lock:
            return self._reading.setdefault(base_url, threading.Lock())

    def get(self, base_url: str) -> Capabilities | None:
        with self._lock:
            found = self._known.get(base_url)
        return found[1] if found and found[0] > time.monotonic() else None

    def put(self, base_url: str, caps: Capabilities) -> None:
        with self._lock:
            self._known[base_url] = (time.monotonic() + CAPABILITY_SECONDS, caps)


CAPABILITIES = CapabilityCache()


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The objects in a JSON array (a server's answer may hold anything where one belongs)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(microsecond=0)
    except ValueError:
        return None


def is_ours(candidate: Any, ours: dict[str, Any]) -> bool | None:
    """True: the relay filed it; False: another document; None: cannot tell."""
    if not isinstance(candidate, dict) or candidate.get("resourceType") != "DocumentReference":
        return False
    if candidate.get("status") == "entered-in-error":
        return False
    mine = ours["identifier"][0]
    for ident in _dicts(candidate.get("identifier")):
        if ident.get("system") == mine["system"] and ident.get("value") == mine["value"]:
            return True
    codes = {(_str(c.get("system")), _str(c.get("code")))
             for c in _dicts(_dict(candidate.get("type")).get("coding"))}
    wanted = ours["type"]["coding"][0]
    if codes and (wanted.get("system"), wanted["code"]) not in codes:
        return False
    when = _instant(candidate.get("date"))
    if when is None:
        return None
    return when == _instant(ours["date"])


@dataclass(frozen=True)
class Verdict:
    filed: str | None  # the id of the relay's document, if it has a FHIR id
    unsure: bool  # some candidate could not be told apart
    matches: int = 0  # the relay's documents found: filed, whether or not with an id


def judge(candidates: list[Any], ours: dict[str, Any]) -> Verdict:
    seen = [(c, is_ours(c, ours)) for c in candidates]
    mine = [c for c, v in seen if v is True]
    unsure = any(v is None for _, v in seen)
    if mine:
        found = mine[0].get("id")
        usable = isinstance(found, str) and FHIR_ID.fullmatch(found) is not None
        return Verdict(found if usable else None, False, len(mine))
    return Verdict(None, unsure)


def entries(bundle: Any) -> tuple[list[Any], str | None]:
    """A searchset's resources (mode match) and its next page's URL."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ValueError("not a Bundle")
    found = [e.get("resource") for e in _dicts(bundle.get("entry"))
             if _dict(e.get("search")).get("mode", "match") == "match"]
    following = [link["url"] for link in _dicts(bundle.get("link"))
                 if link.get("relation") == "next" and isinstance(link.get("url"), str)]
    return found, following[0] if following else None


def reference_id(reference: str, kind: str) -> str | None:
    """The id in a reference to ``kind`` (relative, or absolute ending so)."""
    match = re.search(rf"(?:^|/){kind}/([A-Za-z0-9\-.]{{1,64}})(?:/_history/[^/]+)?$", reference)
    return match.group(1) if match else None
