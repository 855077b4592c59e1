"""The core's ``fetch:`` option: the documents an event links to, fetched for one attempt.

Any action, built-in or third-party, may list link relations under ``fetch:``; an action
type may also name relations it always needs (:meth:`Action.fetches`, as ``fetch_note``
and ``fhir`` do). Before an attempt renders anything, the core GETs the first link of each
relation through the process's one Suki client (the same login, token cache and
base-URL pinning for every action) and hands the parsed JSON documents to the attempt:
templates see ``fetched.<relation>``, plugins ``delivery.fetched``.

The documents are protected health information. They live in the Delivery of one attempt
only: never written to the store, a log line or an error message, and fetched again on
the next attempt. Errors name the relation and Suki's status, never a document.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from suki_relay.errors import DeliveryError, PermanentError, RetryableError
from suki_relay.protocol import parse_json

if TYPE_CHECKING:
    from suki_relay.deliver.suki_api import SukiClient

RELATIONS = ("contents", "encounter_content", "structured_data", "encounter_structured_data",
             "status", "transcripts")
CONTENT_RELATIONS = ("contents", "encounter_content")  # documents note_text understands


def unknown_relations(relations: Iterable[Any]) -> list[str]:
    """The entries that are not documented link relations (for check-time messages)."""
    return [str(r) for r in relations if r not in RELATIONS]


def links(event: Any, relations: Iterable[str]) -> dict[str, str]:
    """The href of each relation's first link, or PermanentError naming the one missing."""
    found = event.get("_links") if isinstance(event, dict) else None
    hrefs: dict[str, str] = {}
    for rel in relations:
        entries = found.get(rel) if isinstance(found, dict) else None
        first = entries[0] if isinstance(entries, list) and entries else None
        href = first.get("href") if isinstance(first, dict) else None
        if not isinstance(href, str) or not href:
            raise PermanentError(f"fetch: the event has no `{rel}` link (only success events "
                                 "carry _links)")
        hrefs[rel] = href
    return hrefs


def fetch(client: SukiClient, event: Any, relations: Iterable[str]) -> dict[str, Any]:
    """Every relation's document, parsed; errors keep their class (404/409 retry) and name
    the relation, never what Suki answered."""
    documents: dict[str, Any] = {}
    for rel, href in links(event, relations).items():
        try:
            resp = client.get(href)
        except RetryableError as exc:
            raise RetryableError(f"fetch {rel}: {exc}", exc.retry_after, exc.status) from None
        except PermanentError as exc:
            raise PermanentError(f"fetch {rel}: {exc}", exc.status) from None
        except DeliveryError as exc:  # pragma: no cover - no other kind exists today
            raise RetryableError(f"fetch {rel}: {exc}") from None
        try:
            documents[rel] = parse_json(resp.content)
        except ValueError:
            raise RetryableError(f"fetch {rel}: Suki answered {resp.status_code} with a body "
                                 "that is not JSON (or is nested too deeply)") from None
    return documents


def placeholders(relations: Iterable[str]) -> dict[str, Any]:
    """Stand-ins shaped like Suki's documented answers, for dry runs and `check`: nothing is
    fetched there, yet every template that uses ``fetched`` is rendered."""
    return {rel: _PLACEHOLDERS[rel] for rel in relations}


_NOT_FETCHED = "(fetched from Suki at delivery; not in a dry run)"
_CONTENT = {"summary": [{"title": "Dry run", "content": _NOT_FETCHED, "loinc_code": ""}],
            "structured_data": [{"title": "Dry run", "data": {}}]}
_PLACEHOLDERS: dict[str, Any] = {
    "contents": _CONTENT,
    "encounter_content": _CONTENT,
    "structured_data": {"structured_data": [{"title": "Dry run", "data": {}}]},
    "encounter_structured_data": {"structured_data": [{"title": "Dry run", "data": {}}]},
    "status": {"status": "completed"},
    "transcripts": {"final_transcript": [{"transcript": _NOT_FETCHED, "start_time": 0,
                                          "end_time": 0, "lang_id": "en"}]},
}


def note_text(document: Any, empty_ok: bool = True) -> str:
    """A content document as plain text: each section's title, then its content, a blank
    line between sections. The ``note_text`` template filter. ``empty_ok=False``, for
    whatever files or forwards the text as the note: PermanentError when the note is empty
    (:func:`empty_note`), as Suki will not fill it in later."""
    sections = _sections(document)
    if not empty_ok and empty_note(document):
        raise PermanentError("the note is empty: Suki's content has no text in any summary "
                             "section; an empty note is not filed")
    parts = []
    for section in sections:
        if not isinstance(section, dict):
            continue
        title, content = section.get("title"), section.get("content")
        lines = [str(v) for v in (title, content) if v not in (None, "")]
        if lines:
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


def empty_note(document: Any) -> bool:
    """True when no summary section of a content document has any content (titles alone
    are not a note); the ``empty_note`` template test: ``{% if fetched.contents is
    empty_note %}``."""
    return not any(isinstance(s, dict) and s.get("content") is not None
                   and str(s["content"]).strip() for s in _sections(document))


def _sections(document: Any) -> list[Any]:
    sections = document.get("summary") if isinstance(document, dict) else None
    if not isinstance(document, dict) or not isinstance(sections, list | None):
        raise PermanentError("note_text: expected a Suki content document (an object with a "
                             "`summary` list), as fetched for contents or encounter_content")
    return sections or []
