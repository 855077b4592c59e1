"""`fetch:` on every action: links fetched through the Suki client before each attempt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from suki_relay.config.check import sample
from suki_relay.deliver.fetch import note_text
from suki_relay.errors import PermanentError, RetryableError
from suki_relay.testing import (
    NOTE,
    SECRET,
    Reply,
    SukiStandIn,
    attempt_once,
    build_spec,
    make_delivery,
    unique_body,
    wait_until,
)

from .conftest import check_fails, run_cli

# The recipe of issue 13 ("forward the note to your own application"), as written.
RECIPE = """
note-to-app:
  type: http
  url: https://app.example.org/suki/notes
  fetch: [contents]
  body: '{"session": "{{ event.session_id }}", "note": {{ fetched.contents | json }}, "text": {{ fetched.contents | note_text | json }}}'
"""  # noqa: E501
RECIPES = Path(__file__).resolve().parents[1] / "docs" / "recipes"
HTTP_RECIPE = "application.md"  # the note into your application over HTTP
FHIR_RECIPE = "ehr.md"  # the note into the EHR over FHIR
PHI = ("PHI-NOTE", "stable angina", "follow up in 2 weeks", "pt-SECRET", "tok-1")


def recipe_yaml(page: str) -> str:
    """The first YAML block of a recipe page in the manual."""
    text = (RECIPES / page).read_text()
    return text.split("```yaml\n", 1)[1].split("```", 1)[0]


def recipe(url: str) -> dict[str, Any]:
    """The manual's HTTP recipe, as written; only the URL points at a local server."""
    actions = yaml.safe_load(recipe_yaml(HTTP_RECIPE))["actions"]
    actions["note-to-app"]["url"] = url
    actions["note-to-app"]["retry"] = {"initial_seconds": 0.2, "max_seconds": 0.5}
    return actions


def test_the_manual_shows_the_recipe_as_the_issue_wrote_it() -> None:
    assert RECIPE.strip() in recipe_yaml(HTTP_RECIPE).replace("\n  ", "\n")
    assert yaml.safe_load(recipe_yaml(HTTP_RECIPE))["actions"] == yaml.safe_load(RECIPE)


@pytest.mark.parametrize("heading", [HTTP_RECIPE, FHIR_RECIPE])
def test_the_recipe_yamls_pass_check(tmp_path: Path, heading: str) -> None:
    (tmp_path / "actions.yaml").write_text(recipe_yaml(heading))
    env = {"SUKI_WEBHOOK_SECRET": "s", "SUKI_PARTNER_ID": "p", "SUKI_PARTNER_TOKEN": "t",
           "EHR_CLIENT_SECRET": "c"}
    result = run_cli("check", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    shown = run_cli("routes", "test", "success", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "would fetch contents: GET https://sdp.suki.ai/api/v1/ambient/session/" in shown.stdout


def with_suki(suki: SukiStandIn, actions: dict[str, Any]) -> dict[str, Any]:
    """A config routing success events to ``actions``, with Suki's API stood in."""
    return {"suki": suki.settings(), "actions": actions,
            "rules": [{"name": "notes", "when": {"status": "success"}, "do": list(actions)}]}


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_http_recipe_delivers_the_note_and_its_text(write_config, local_relay, sink,  # type: ignore[no-untyped-def]
                                                        relay_log, suki: SukiStandIn) -> None:
    """Suki first answers 404 (not ready) and the application 503: each attempt fetches
    the note again. Nothing fetched reaches the logs, the store or an error."""
    app = sink(replies=[Reply(503)], default=Reply(200))
    suki.content_status = [404]
    cfg = write_config(with_suki(suki, recipe(app.url + "/suki/notes")))
    r = local_relay(cfg)
    body = unique_body("success")
    event_id = r.accept(body)
    wait_until(lambda: len(app.received) == 2, message="the retried delivery")
    got = app.received[-1]
    assert got.path == "/suki/notes"
    assert got.json() == {"session": json.loads(body)["session_id"], "note": NOTE,
                          "text": note_text(NOTE)}
    assert got.json()["text"] == ("Assessment\nPHI-NOTE-TEXT stable angina\n\n"
                                  "Plan\nPHI-NOTE-PLAN follow up in 2 weeks")
    assert len(suki.api_calls("/content")) == 3  # 404, then once for each target attempt
    assert len(suki.logins) == 1  # one token for every attempt of the process
    wait_until(lambda: [d.state for d in r.store.deliveries()] == ["done"], message="done")
    detail = r.store.event(event_id)
    assert detail is not None
    attempts = detail.deliveries[0].attempts
    assert [(a.outcome, a.error) for a in attempts] == [
        ("retry", "fetch contents: Suki answered 404: content not ready yet"),
        ("retry", "note-to-app target answered 503"), ("ok", None)]
    logs = relay_log.text()
    assert "note-to-app" in logs
    for secret in PHI:
        assert secret not in logs, f"{secret!r} in the relay's log output"
    stored = b"".join(p.read_bytes() for p in cfg.parent.glob("relay.db*"))
    assert stored and b"PHI-NOTE" not in stored


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_third_party_plugin_sees_delivery_fetched(write_config, local_relay, sink,  # type: ignore[no-untyped-def]
                                                    suki: SukiStandIn) -> None:
    """`probe` is a package installed through the entry point group (tests/plugins/)."""
    probe = sink()
    local_relay(write_config(with_suki(suki, {"probe-it": {
        "type": "probe", "url": probe.url, "fetch": ["contents", "status", "transcripts"]}}))
    ).accept(unique_body("success"))
    report = wait_until(lambda: probe.received, message="the probe's report")[0].json()
    assert report["fetched"]["contents"] == NOTE
    assert report["fetched"]["status"] == {"status": "completed"}
    assert report["fetched"]["transcripts"]["final_transcript"][0]["transcript"].startswith(
        "PHI-TRANSCRIPT")


@pytest.mark.parametrize("status", [404, 409])
def test_content_not_ready_is_retried(tmp_path: Path, sink, suki: SukiStandIn,  # type: ignore[no-untyped-def]
                                      status: int) -> None:
    app = sink()
    spec = build_spec("http", recipe(app.url)["note-to-app"], tmp_path, suki=suki.settings())
    suki.content_status = [status]
    with pytest.raises(RetryableError, match=f"fetch contents: Suki answered {status}"):
        attempt_once(spec, make_delivery("success"))
    assert app.received == []
    attempt_once(spec, make_delivery("success"))
    assert app.received[0].json()["note"] == NOTE


@pytest.mark.parametrize("event", ["failure", "timeout", "cancelled"])
def test_an_event_without_the_link_fails_for_good_naming_it(tmp_path: Path, sink,  # type: ignore[no-untyped-def]
                                                            suki: SukiStandIn, event: str) -> None:
    app = sink()
    spec = build_spec("http", {**recipe(app.url)["note-to-app"],
                               "fetch": ["status", "transcripts"]}, tmp_path,
                      suki=suki.settings())
    with pytest.raises(PermanentError, match="the event has no `status` link"):
        attempt_once(spec, make_delivery(event))
    assert app.received == [] and suki.sink.received == []


def test_one_missing_relation_fails_the_whole_attempt(tmp_path: Path, sink,  # type: ignore[no-untyped-def]
                                                      suki: SukiStandIn) -> None:
    payload = json.loads(sample("success"))
    del payload["_links"]["transcripts"]
    spec = build_spec("http", {"url": sink().url, "fetch": ["contents", "transcripts"]},
                      tmp_path, suki=suki.settings())
    with pytest.raises(PermanentError, match="no `transcripts` link"):
        attempt_once(spec, make_delivery(payload))


def test_a_hostile_link_is_refused_before_any_credential_leaves(tmp_path: Path, sink,  # type: ignore[no-untyped-def]
                                                                 suki: SukiStandIn) -> None:
    elsewhere = sink()
    payload = json.loads(sample("success"))
    payload["_links"]["contents"] = [{"href": elsewhere.url + "/steal"}]
    spec = build_spec("http", {"url": sink().url, "fetch": ["contents"]}, tmp_path,
                      suki=suki.settings())
    with pytest.raises(PermanentError, match="fetch contents: link href refused"):
        attempt_once(spec, make_delivery(payload))
    assert elsewhere.received == []


def test_every_action_shares_one_login(tmp_path: Path, sink, suki: SukiStandIn) -> None:  # type: ignore[no-untyped-def]
    from suki_relay.testing import build_config

    app = sink()
    config = build_config({"suki": suki.settings(), "actions": {
        "a": {"type": "http", "url": app.url, "fetch": ["contents"]},
        "b": {"type": "http", "url": app.url, "fetch": ["status"],
              "body": "{{ fetched.status.status }}"}}}, tmp_path)
    for name in ("a", "b", "a"):
        attempt_once(config.actions[name], make_delivery("success", action=name))
    assert len(suki.logins) == 1
    assert app.received[1].body == b"completed"


def test_templates_without_fetch_see_an_empty_fetched(tmp_path: Path, sink) -> None:  # type: ignore[no-untyped-def]
    app = sink()
    spec = build_spec("http", {"url": app.url, "body": "{{ fetched | length }}"}, tmp_path)
    attempt_once(spec, make_delivery("failure"))
    assert app.received[0].body == b"0"


def test_note_text() -> None:
    assert note_text({"summary": []}) == ""
    assert note_text({"structured_data": []}) == ""
    assert note_text({"summary": [{"title": "HPI", "content": "a"}, "junk",
                                  {"title": "", "content": "b"}, {"title": "Empty"}]}) \
        == "HPI\na\n\nb\n\nEmpty"
    for wrong in ({"summary": "x"}, [], "text", None):
        with pytest.raises(PermanentError, match="expected a Suki content document"):
            note_text(wrong)


# ---------------------------------------------------------------- check and dry runs


def test_check_validates_the_relations(tmp_path: Path) -> None:
    report = check_fails(tmp_path, """
receiver: {secret: s}
suki: {base_url: "https://sdp.suki.ai", partner_id: p, partner_token: t}
actions:
  a: {type: http, url: "https://x.example.org", fetch: [contents, note]}
  b: {type: http, url: "https://x.example.org", fetch: contents-please}
  c: {type: http, url: "https://x.example.org", fetch: {contents: true}}
""")
    assert "actions.a.fetch: unknown link relation(s) note; expected any of contents, " \
           "encounter_content, structured_data" in report
    assert "actions.b.fetch: unknown link relation(s) contents-please" in report
    assert "actions.c.fetch: expected a list or a string, got a mapping" in report


def test_check_needs_the_suki_section(tmp_path: Path) -> None:
    report = check_fails(tmp_path, """
receiver: {secret: s}
actions:
  a: {type: http, url: "https://x.example.org", fetch: [contents]}
""")
    assert "actions.a: fetching contents needs the top-level `suki:` section" in report


def test_check_renders_templates_that_use_fetched(tmp_path: Path) -> None:
    report = check_fails(tmp_path, """
receiver: {secret: s}
suki: {base_url: "https://sdp.suki.ai", partner_id: p, partner_token: t}
actions:
  a: {type: http, url: "https://x.example.org", fetch: [contents],
      body: "{{ fetched.transcripts | json }}"}
rules:
  - {name: notes, when: {status: success}, do: [a]}
""")
    assert "actions.yaml:6: actions.a.body: rendering against the success sample" in report
    assert "transcripts" in report


def test_routes_test_shows_the_links_without_fetching(tmp_path: Path, suki: SukiStandIn,
                                                      sink) -> None:  # type: ignore[no-untyped-def]
    app = sink()
    (tmp_path / "actions.yaml").write_text(yaml.safe_dump(
        {"receiver": {"secrets": [SECRET]}, **with_suki(suki, recipe(app.url))}))
    result = run_cli("routes", "test", "success", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (f"would fetch contents: GET {suki.url}/api/v1/ambient/session/"
            "20965414-929a-4f71-a3e5-b92bec07d086/content (not fetched in a dry run)"
            ) in result.stdout
    assert '"text": "Dry run\\n(fetched from Suki at delivery; not in a dry run)"' \
        in result.stdout
    assert suki.sink.received == [] and app.received == []
    failure = run_cli("routes", "test", "failure", "--json", cwd=tmp_path)
    assert failure.returncode == 0  # no rule routes a failure here
    assert run_cli("check", cwd=tmp_path).returncode == 0
    assert suki.sink.received == []
