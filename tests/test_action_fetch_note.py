"""fetch_note against a local server standing in for Suki's API."""

from __future__ import annotations

import contextlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from suki_relay.config.check import sample
from suki_relay.errors import ConfigError, PermanentError, RetryableError
from suki_relay.testing import (
    NOTE,
    TRANSCRIPT,
    Sink,
    SukiStandIn,
    attempt_once,
    build_spec,
    make_delivery,
)

SESSION = "20965414-929a-4f71-a3e5-b92bec07d086"
ENCOUNTER = "29de56bc-960a-4cd5-b18f-79a798d62874"


class Saver:
    """fetch_note built as from actions.yaml; each deliver() is one attempt as the
    deliverer makes it (links fetched by the core first)."""

    def __init__(self, tmp_path: Path, base_url: str, **options: Any):
        self.spec = build_spec("fetch_note", {"directory": "notes", **options}, tmp_path,
                               suki={"base_url": base_url, "partner_id": "p-1",
                                     "partner_token": "pt-SECRET", "provider_id": "dr-7"})

    def deliver(self, delivery: Any) -> str | None:
        return attempt_once(self.spec, delivery)


def saver(tmp_path: Path, base_url: str, **options: Any) -> Saver:
    return Saver(tmp_path, base_url, **options)


def test_fetches_and_saves_owner_only(tmp_path: Path, suki: SukiStandIn) -> None:
    action = saver(tmp_path, suki.url, links=["contents", "transcripts"], format="text")
    assert action.deliver(make_delivery("success")) == "saved 2 file(s)"
    folder = tmp_path / "notes" / ENCOUNTER / SESSION
    assert json.loads((folder / "contents.json").read_text()) == NOTE
    assert json.loads((folder / "transcripts.json").read_text()) == TRANSCRIPT
    text = (folder / "contents.txt").read_text()
    assert text == ("Assessment\nPHI-NOTE-TEXT stable angina\n\n"
                    "Plan\nPHI-NOTE-PLAN follow up in 2 weeks")
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    for parent in (tmp_path / "notes", tmp_path / "notes" / ENCOUNTER, folder):
        assert stat.S_IMODE(parent.stat().st_mode) == 0o700, parent
    assert suki.logins == [{"partner_id": "p-1", "partner_token": "pt-SECRET",
                            "provider_id": "dr-7"}]
    assert not list(folder.glob(".tmp-*"))


def test_token_is_cached_and_refreshed_once_on_401(tmp_path: Path, suki: SukiStandIn) -> None:
    action = saver(tmp_path, suki.url)
    action.deliver(make_delivery("success"))
    action.deliver(make_delivery("success"))  # same file, overwritten: idempotent
    assert len(suki.logins) == 1
    suki.api_status = [401]
    action.deliver(make_delivery("success"))
    assert len(suki.logins) == 2
    tokens = [g.headers.get("sdp_suki_token") for g in suki.sink.received
              if g.path.endswith("/content")]
    assert tokens == ["tok-1", "tok-1", "tok-1", "tok-2"]


@pytest.mark.parametrize("replies, error", [
    ([401, 401], PermanentError),
    ([403], PermanentError),
])
def test_refused_credentials_are_permanent(tmp_path: Path, suki: SukiStandIn, replies: list[int],
                                           error: type) -> None:
    suki.api_status = replies
    with pytest.raises(error, match="refused the credentials"):
        saver(tmp_path, suki.url).deliver(make_delivery("success"))


@pytest.mark.parametrize("status", [404, 409])
def test_content_not_ready_is_retried(tmp_path: Path, suki: SukiStandIn, status: int) -> None:
    suki.content_status = [status]
    with pytest.raises(RetryableError, match="not ready"):
        saver(tmp_path, suki.url).deliver(make_delivery("success"))


def test_credentials_go_to_the_base_url_and_nowhere_else(tmp_path: Path, suki: SukiStandIn) -> None:
    with Sink() as elsewhere:
        event = json.loads(sample("success"))
        action = saver(tmp_path, suki.url)
        for href in (elsewhere.url + "/api/v1/ambient/session/x/content",
                     "//127.0.0.1:1/steal", "/api/../../admin", "http:/x\\@evil"):
            event["_links"] = {"contents": [{"href": href}]}
            with pytest.raises(PermanentError, match="href refused"):
                action.deliver(make_delivery(event))
        assert elsewhere.received == []
    assert all(g.path == "/api/v1/auth/login" for g in suki.sink.received)


def test_base_path_is_a_boundary(tmp_path: Path, suki: SukiStandIn) -> None:
    action = saver(tmp_path, suki.url + "/api")
    event = json.loads(sample("success"))
    event["_links"] = {"contents": [{"href": "/../other/x"}]}
    with pytest.raises(PermanentError, match="href refused"):
        action.deliver(make_delivery(event))


@pytest.mark.parametrize("session, name", [("../../../etc", "..%2F..%2F..%2Fetc"),
                                           ("/etc/passwd", "%2Fetc%2Fpasswd"),
                                           ("a\x00b", "a%00b"), ("..", "%2E%2E")])
def test_payload_values_in_paths_stay_one_file_name(tmp_path: Path, suki: SukiStandIn,
                                                    session: str, name: str) -> None:
    event = json.loads(sample("success"))
    event["session_id"] = session
    saver(tmp_path, suki.url, path="{{ event.session_id }}").deliver(make_delivery(event))
    assert [p.name for p in (tmp_path / "notes").iterdir()] == [name]
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize("path", ["../{{ event.session_id }}", "/abs/{{ rel }}",
                                  "a/../../{{ rel }}", "a//{{ rel }}", "./{{ rel }}"])
def test_a_path_template_cannot_leave_the_directory(tmp_path: Path, suki: SukiStandIn,
                                                    path: str) -> None:
    with pytest.raises(PermanentError, match="refused"):
        saver(tmp_path, suki.url, path=path).deliver(make_delivery("success"))
    assert [p.name for p in tmp_path.iterdir()] == ["actions.yaml"]  # nothing written


def test_no_event_can_overwrite_another_events_files(tmp_path: Path, suki: SukiStandIn) -> None:
    """encounter "E1/S1" with session "." rendered E1/S1/contents.json: the file of
    encounter E1, session S1. Each now has its own."""
    action = saver(tmp_path, suki.url)
    first = json.loads(sample("success")) | {"encounter_id": "E1", "session_id": "S1"}
    action.deliver(make_delivery(first))
    mine = tmp_path / "notes" / "E1" / "S1" / "contents.json"
    mine.write_text("first event's note", encoding="utf-8")
    for encounter, session in (("E1/S1", "."), ("E1", "S1/."), ("E1/S1/.", ""),
                               ("E1%2FS1", "%2E")):
        other = json.loads(sample("success")) | {"encounter_id": encounter,
                                                  "session_id": session}
        with contextlib.suppress(PermanentError):  # an empty segment is refused: also fine
            action.deliver(make_delivery(other))
        assert mine.read_text(encoding="utf-8") == "first event's note", (encounter, session)
    names = sorted(str(p.relative_to(tmp_path / "notes"))
                   for p in (tmp_path / "notes").rglob("contents.json"))
    assert names == ["E1%252FS1/%252E/contents.json", "E1%2FS1/%2E/contents.json",
                     "E1/S1%2F./contents.json", "E1/S1/contents.json"]


def test_existing_folders_are_made_owner_only(tmp_path: Path, suki: SukiStandIn) -> None:
    (tmp_path / "notes" / ENCOUNTER).mkdir(parents=True)
    (tmp_path / "notes").chmod(0o755)
    (tmp_path / "notes" / ENCOUNTER).chmod(0o777)
    saver(tmp_path, suki.url).deliver(make_delivery("success"))
    for folder in (tmp_path / "notes", tmp_path / "notes" / ENCOUNTER,
                   tmp_path / "notes" / ENCOUNTER / SESSION):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


@pytest.mark.parametrize("size, segments", [(300, 1), (250, 17)], ids=["name", "path"])
def test_an_over_long_name_is_a_permanent_failure(tmp_path: Path, suki: SukiStandIn, size: int,
                                                  segments: int) -> None:
    """Too long for the filesystem is true on every retry: fail for good, not for a day."""
    event = json.loads(sample("success"))
    event["session_id"] = "s" * size
    path = "/".join(["{{ event.session_id }}"] * segments) + "/{{ rel }}"
    with pytest.raises(PermanentError, match="longer than") as info:
        saver(tmp_path, suki.url, path=path).deliver(make_delivery(event))
    assert "sss" not in str(info.value)


def test_needs_the_suki_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs the top-level `suki:` section"):
        build_spec("fetch_note", {"directory": "notes"}, tmp_path)


def test_errors_carry_no_phi_or_token(tmp_path: Path, suki: SukiStandIn) -> None:
    suki.api_status = [403]
    with pytest.raises(PermanentError) as info:
        saver(tmp_path, suki.url).deliver(make_delivery("success"))
    assert "tok-" not in str(info.value) and "pt-SECRET" not in str(info.value)
