"""The console for an operator, in Chromium against a real gunicorn relay: what is lost
or held up (refused requests, deliveries in every state, a paused action), charts drawn
on the server, search, an attempt in detail, bulk replay by filter, roles and the audit
trail. Every page is saved as a screenshot under the test's ``screenshots/`` folder."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from suki_relay.console.auth import hash_password
from suki_relay.store import NewEvent
from suki_relay.testing import SECRET, Reply, post_signed, unique_body, wait_until

from ..conftest import http_action, open_test_store
from . import test_console_browser as in_browser
from .test_console_browser import PASSWORD, By, Shots, sign_in

browser = in_browser.browser  # the fixture: headless Chromium

FAILING = 5
SEEDED_HOURS = (1, 3, 5)  # events seeded this many hours ago: one bar each


def write_config(folder: Path, target: str) -> Path:
    digest = hash_password(PASSWORD)
    config = {
        "receiver": {"secrets": [SECRET]},
        "store": "sqlite:///relay.db",
        "delivery": {"lease_seconds": 2, "poll_seconds": 0.2, "shutdown_seconds": 5,
                     "threads": 2},
        "actions": {"ehr": http_action(target + "/hooks/suki?token=SECRET-QS", max_concurrency=1,
                                       pause_after=3, probe_every_seconds=3600,
                                       retry={"initial_seconds": 0.1, "max_attempts": 1})},
        "rules": [{"name": "to the EHR", "when": {"status": "failure"}, "do": ["ehr"]}],
        "console": {"enabled": True, "users": {
            "ops": digest,  # a bare hash: admin, as before roles
            "olga": {"hash": digest, "role": "operator"},
            "vic": {"hash": digest, "role": "viewer"}}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "actions.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def seed(folder: Path) -> None:
    """Events received hours ago, straight into the store (as if the relay had run)."""
    store = open_test_store("sqlite:///relay.db", folder)
    now = time.time()
    store.record([NewEvent(f"seed:{h}", unique_body("success"), None, "success", f"seed-{h}",
                           None, False, [], [], received_at=now - h * 3600)
                  for h in SEEDED_HOURS])


def signed_in_as(browser: Any, console: str, user: str) -> None:
    browser.delete_all_cookies()
    browser.get(console + "/login")
    sign_in(browser, user, PASSWORD)
    wait_until(lambda: "Overview" in browser.title, message=f"{user} signed in")


def bars(browser: Any, chart: int) -> int:
    svg = browser.find_elements(By.CSS_SELECTOR, "svg.chart")[chart]
    return len(svg.find_elements(By.CSS_SELECTOR, "rect.bar"))


def test_operating_the_console_in_a_browser(browser: Any, relay, sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    outage = {"on": True}
    target = sink(handler=lambda got: Reply(503 if outage["on"] else 200))
    folder = tmp_path / "relay"
    cfg = write_config(folder, target.url)
    seed(folder)
    r = relay(cfg, workers=2, threads=4)
    console = r.url + "/console"
    shots = Shots(browser, tmp_path / "screenshots")

    events = [post_signed(r.webhook, unique_body("failure")).json()["event_id"]
              for _ in range(FAILING)]
    for _ in range(2):  # refused: the secret does not match
        assert post_signed(r.webhook, unique_body(), secret="not-suki's").status_code == 401
    wait_until(lambda: len(target.received) == 3, message="three failures, then the pause")
    time.sleep(1.5)  # the refusals are written every second; nothing else is attempted
    assert len(target.received) == 3

    # the overview: refused count, the paused action, charts drawn on the server
    signed_in_as(browser, console, "ops")
    assert browser.find_element(By.ID, "refused-count").text == "2"
    paused = browser.find_element(By.CSS_SELECTOR, "ul.paused").text
    assert "ehr" in paused and "paused after 3 failed attempts in a row" in paused
    assert 'http-equiv="refresh"' in browser.page_source
    assert bars(browser, 0) == len(SEEDED_HOURS) + 1  # accepted: the seeded hours and now
    assert bars(browser, 1) == 1  # delivered and failed: the failures, this hour
    assert bars(browser, 2) == 1  # refused, this hour
    assert "<script" not in browser.page_source
    shots("overview")

    browser.get(console + "/refused")
    rows = browser.find_elements(By.CSS_SELECTOR, "#refused tbody tr")  # a row per worker
    assert all("bad_signature" in r.text and "127.0.0.1" in r.text for r in rows)
    assert sum(int(r.find_element(By.CSS_SELECTOR, "td[data-label=Count]").text)
               for r in rows) == 2
    shots("refused")

    # deliveries in every state, with what settles them; filters
    browser.get(console + "/deliveries")
    states = browser.find_element(By.CSS_SELECTOR, "ul.states").text
    assert "failed 3" in states and "pending 2" in states
    shots("deliveries")
    browser.get(console + "/deliveries?action=ehr&state=pending")
    waiting = browser.find_elements(By.CSS_SELECTOR, "#deliveries tbody tr")
    assert len(waiting) == 2 and all("waits: ehr is paused" in r.text for r in waiting)
    browser.get(console + "/deliveries?state=failed")
    rows = browser.find_elements(By.CSS_SELECTOR, "#deliveries tbody tr")
    assert len(rows) == 3 and "answered 503" in rows[0].text
    shots("deliveries-failed")

    # an attempt in detail: the target without its query string
    rows[0].find_element(By.CSS_SELECTOR, "td[data-label=Attempts] a").click()
    wait_until(lambda: "Attempt 1 of" in browser.title, message="the attempt page")
    facts = browser.find_element(By.ID, "attempt").text
    assert f"{target.url}/hooks/suki" in facts and "SECRET-QS" not in browser.page_source
    assert "HTTP 503" in facts
    shots("attempt")

    # search: an event id, a delivery id, a session id
    browser.find_element(By.ID, "q").send_keys(events[0] + "\n")
    wait_until(lambda: browser.current_url.endswith(f"/events/{events[0]}"), message="found")
    delivery_id = browser.find_element(By.CSS_SELECTOR, "section.delivery .mono").text
    browser.get(console + f"/search?q={delivery_id}")
    assert f"/events/{events[0]}" in browser.current_url
    browser.get(console + "/search?q=seed-3")
    assert "session=seed-3" in browser.current_url
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr")) == 1
    browser.get(console + "/search?q=nothing-has-this")
    assert "Nothing found" in browser.title
    browser.get(console + "/events")
    assert events[-1] in browser.find_element(By.CSS_SELECTOR, "table.list tbody").text
    shots("events")

    # a viewer sees, but no payload and no change: 403, and audited
    signed_in_as(browser, console, "vic")
    browser.get(console + f"/events/{events[0]}")
    assert "Show payload" not in browser.page_source and "Replay…" not in browser.page_source
    shots("event-as-viewer")
    csrf = re.search(r'name="csrf" value="([^"]+)"', browser.page_source).group(1)
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    shown = requests.post(console + f"/events/{events[0]}/payload", cookies=cookies,
                          data={"csrf": csrf}, timeout=10, allow_redirects=False)
    assert shown.status_code == 403 and "session_id" not in shown.text
    browser.get(console + f"/replay?event={events[0]}&delivery={delivery_id}")
    assert "Forbidden" in browser.title or "may not do this" in browser.page_source
    shots("refused-to-viewer")
    browser.get(console + "/audit")
    assert "may not do this" in browser.page_source  # the audit page: admins only

    # bulk replay by filter, as an operator: the count confirmed is the count replayed
    signed_in_as(browser, console, "olga")
    browser.get(console + "/deliveries?action=ehr&state=failed")
    browser.find_element(By.XPATH, "//a[normalize-space()='Replay these…']").click()
    wait_until(lambda: "Replay deliveries" in browser.title, message="the confirmation")
    confirmed = int(browser.find_element(By.ID, "bulk-count").text)
    assert confirmed == 3
    shots("replay-bulk-confirm")
    browser.find_element(By.XPATH, "//button[starts-with(normalize-space(), 'Replay')]").click()
    wait_until(lambda: "Replayed" in browser.title, message="the outcome")
    assert f"{confirmed} deliveries are pending again" in browser.page_source
    shots("replay-bulk-done")
    store = open_test_store("sqlite:///relay.db", folder)
    assert sorted(d.state for d in store.deliveries(action="ehr")) == ["pending"] * FAILING

    # the paused action resumes from the overview; everything is delivered
    outage["on"] = False
    browser.get(console + "/")
    browser.find_element(By.XPATH, "//a[normalize-space()='Resume…']").click()
    wait_until(lambda: "Resume ehr" in browser.title, message="the resume confirmation")
    shots("resume-confirm")
    browser.find_element(By.XPATH, "//button[normalize-space()='Resume']").click()
    wait_until(lambda: "Resumed" in browser.title, message="resumed")
    wait_until(lambda: len({g.json()["session_id"] for g in target.received[3:]}) == FAILING,
               timeout=30, message="every waiting delivery delivered")

    # the audit trail, as an admin
    signed_in_as(browser, console, "ops")
    browser.get(console + "/audit")
    trail = browser.find_element(By.ID, "audit").text
    for line in ("vic viewer refused: payload", "olga operator bulk replay",
                 "olga operator resume ehr", "ops admin sign in", "vic viewer sign in"):
        assert line in trail, line
    assert "count=3" in trail
    shots("audit")
    favicon = requests.get(console + "/static/favicon.svg", timeout=10)
    assert favicon.status_code == 200 and favicon.headers["Content-Type"] == "image/svg+xml"
    assert all(p.stat().st_size > 5000 for p in shots.taken)
