"""An empty note is never filed or forwarded as a note: Suki's content with no text in its
summary fails the fhir action and fetch_note's text output for good, with a clear
message, and templates can test for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from suki_relay.errors import PermanentError
from suki_relay.testing import NOTE, SukiStandIn, attempt_once, build_spec, make_delivery

from .conftest import success_event
from .fhir_standin import FhirStandIn

EMPTY_NOTES = [
    {"summary": []},
    {"summary": None, "structured_data": []},
    {"summary": [{"title": "Assessment", "content": ""}, {"title": "Plan", "content": "  \n"}]},
    {"summary": [{"title": "Assessment"}, {"title": "Plan", "content": None}]},
]


def event() -> dict[str, Any]:
    return success_event("pat-1")


@pytest.mark.parametrize("content", EMPTY_NOTES)
def test_the_fhir_action_does_not_file_an_empty_note(tmp_path: Path, content: Any) -> None:
    ehr = FhirStandIn()
    try:
        with SukiStandIn(content=content) as suki:
            spec = build_spec("fhir", {
                "base_url": ehr.base_url, "auth": ehr.oauth(),
                "subject": "Patient/{{ event.additional_info.patient_id }}"},
                tmp_path, suki=suki.settings())
            with pytest.raises(PermanentError, match="the note is empty"):
                attempt_once(spec, make_delivery(event()))
            assert ehr.posts == [] and ehr.documents == {}
            suki.content = NOTE  # the same action files a note that has text
            attempt_once(spec, make_delivery(event()))
            assert len(ehr.documents) == 1
    finally:
        ehr.stop()


@pytest.mark.parametrize("content", EMPTY_NOTES[:1] + EMPTY_NOTES[2:3])
def test_fetch_note_does_not_save_an_empty_note_as_text(tmp_path: Path, content: Any) -> None:
    notes = tmp_path / "notes"
    with SukiStandIn(content=content) as suki:
        text = build_spec("fetch_note", {"directory": str(notes), "format": "text"},
                          tmp_path, suki=suki.settings())
        with pytest.raises(PermanentError, match="the note is empty"):
            attempt_once(text, make_delivery(event()))
        assert not notes.exists() or not list(notes.rglob("*.*"))
        # the JSON document alone is Suki's answer as it is, and is saved as before
        as_json = build_spec("fetch_note", {"directory": str(notes)}, tmp_path,
                             suki=suki.settings())
        attempt_once(as_json, make_delivery(event()))
        assert [p.suffix for p in notes.rglob("*.*")] == [".json"]


def test_templates_can_test_for_an_empty_note(tmp_path: Path, sink) -> None:  # type: ignore[no-untyped-def]
    app = sink()
    body = ('{"empty": {{ (fetched.contents is empty_note) | json }}, '
            '"text": {{ fetched.contents | note_text | json }}}')
    for content, empty in ((EMPTY_NOTES[2], True), (NOTE, False)):
        with SukiStandIn(content=content) as suki:
            spec = build_spec("http", {"url": app.url, "fetch": ["contents"], "body": body},
                              tmp_path, suki=suki.settings())
            attempt_once(spec, make_delivery(event()))
        assert app.received[-1].json()["empty"] is empty
    assert "PHI-NOTE-TEXT" in app.received[-1].json()["text"]
