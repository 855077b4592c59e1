"""The operator console in a real browser: headless Chromium (Debian's chromium and
chromium-driver) driven by selenium, against a real gunicorn relay on 127.0.0.1 whose
deliveries go to a local Sink.

Each page is saved as a screenshot at laptop and phone widths under the test's tmp dir
(``screenshots/``), for a person to look at.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from suki_relay.console.auth import hash_password
from suki_relay.testing import SECRET, Reply, post_signed, unique_body, wait_until

from ..conftest import http_action

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
PASSWORD = "correct horse battery staple"
LAPTOP, PHONE = (1366, 860), (390, 844)


def _need_browser() -> None:
    if CHROMIUM and CHROMEDRIVER:
        return
    message = "chromium and chromium-driver are not installed (apt-get install chromium " \
              "chromium-driver; .ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    _need_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--force-device-scale-factor=1", f"--user-data-dir={tmp_path / 'chromium'}",
                f"--window-size={LAPTOP[0]},{LAPTOP[1]}"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER),
                                      log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


# every visible control a person can reach must have a name a screen reader can say
UNLABELLED = """
return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button, a')]
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !el.textContent.trim())
  .map(el => el.outerHTML.slice(0, 80));
"""


class Shots:
    """Full-page screenshots of each page at laptop and phone widths."""

    def __init__(self, driver: Any, folder: Path):
        self.driver = driver
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    def __call__(self, name: str) -> None:
        unlabelled = self.driver.execute_script(UNLABELLED)
        assert not unlabelled, f"{name}: controls without a label: {unlabelled}"
        for label, (width, height) in (("laptop", LAPTOP), ("phone", PHONE)):
            self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": height, "deviceScaleFactor": 1,
                "mobile": label == "phone"})
            full = self.driver.execute_script("return document.documentElement.scrollHeight")
            shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": max(height, int(full)),
                         "scale": 1}})
            path = self.folder / f"{name}-{label}.png"
            path.write_bytes(base64.b64decode(shot["data"]))
            self.taken.append(path)
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def write_config(folder: Path, target: str, enabled: bool = True) -> Path:
    config = {
        "receiver": {"secrets": [SECRET]},
        "store": "sqlite:///relay.db",
        "delivery": {"lease_seconds": 2, "poll_seconds": 0.2, "shutdown_seconds": 5,
                     "threads": 2},
        "actions": {"ehr": http_action(target, retry={"initial_seconds": 0.1,
                                                      "max_attempts": 2}),
                    "archive": http_action(target + "/archive")},
        "rules": [{"name": "to the EHR", "when": {"status": "failure"}, "do": ["ehr"]}],
        "console": {"enabled": enabled, "users": {"ops": hash_password(PASSWORD)}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "actions.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def sign_in(driver: Any, user: str, password: str) -> None:
    driver.find_element(By.ID, "username").clear()
    driver.find_element(By.ID, "username").send_keys(user)
    field = driver.find_element(By.ID, "password")
    field.send_keys(password)
    field.send_keys(Keys.ENTER)  # the keyboard, as a person signs in


def test_console_in_a_browser(browser: Any, relay, sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    outage = {"on": True}
    target = sink(handler=lambda got: Reply(500 if outage["on"] else 200))
    r = relay(write_config(tmp_path / "relay", target.url), workers=2, threads=4)
    console = r.url + "/console"
    shots = Shots(browser, tmp_path / "screenshots")

    secret_detail = "transcript-" + os.urandom(6).hex()  # stands for PHI in the payload
    body = unique_body("failure", error_detail=secret_detail)
    session_id = body.split(b'"session_id": "')[1].split(b'"')[0].decode()
    event_id = post_signed(r.webhook, body).json()["event_id"]
    for name in ("success", "timeout", "cancelled"):
        post_signed(r.webhook, unique_body(name))
    wait_until(lambda: len(target.received) == 2, message="both attempts to fail")

    # pages cannot be reached without signing in
    browser.get(console + f"/events/{event_id}")
    assert browser.current_url.startswith(console + "/login?next=")
    assert "Sign in" in browser.title and session_id not in browser.page_source
    shots("login")

    sign_in(browser, "ops", "not the password")
    error = browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
    assert "Wrong user name or password" in error
    shots("login-refused")
    sign_in(browser, "ops", PASSWORD)
    wait_until(lambda: "Event" in browser.title, message="the event page after sign-in")
    assert browser.current_url == console + f"/events/{event_id}"  # where it was going

    # the payload is not on the page until asked for
    assert secret_detail not in browser.page_source
    assert "HTTP 500" in browser.page_source or "500" in browser.find_element(
        By.CSS_SELECTOR, "table.attempts").text
    shots("event")
    browser.find_element(By.XPATH, "//button[normalize-space()='Show payload']").click()
    wait_until(lambda: secret_detail in browser.page_source, message="the payload shown")
    assert session_id in browser.find_element(By.CSS_SELECTOR, "pre.payload").text
    shots("event-payload")

    browser.get(console + "/")
    assert "Overview" in browser.title
    failed_card = browser.find_element(By.CSS_SELECTOR, ".card-bad").text
    assert "1" in failed_card
    shots("overview")

    browser.get(console + "/events")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr")
    assert len(rows) == 4
    browser.find_element(By.ID, "f-status").send_keys("failure")
    browser.find_element(By.XPATH, "//button[normalize-space()='Filter']").click()
    wait_until(lambda: "status=failure" in browser.current_url, message="filtered")
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr")) == 1
    browser.get(console + "/events")
    shots("events")

    # a failed delivery is listed; its Replay control makes the target receive it again
    browser.get(console + "/failed")
    assert event_id in browser.page_source
    shots("failed")
    outage["on"] = False
    browser.find_element(By.CSS_SELECTOR, "a.button[href*='/replay?']").click()
    wait_until(lambda: "Replay this delivery?" in browser.page_source, message="confirmation")
    assert len(target.received) == 2  # asking changed nothing
    shots("replay-confirm")
    browser.find_element(By.XPATH, "//button[normalize-space()='Replay']").click()
    wait_until(lambda: "Replayed" in browser.title, message="the outcome page")
    assert "pending again" in browser.find_element(By.CSS_SELECTOR, "[role=status]").text
    shots("replay-done")
    wait_until(lambda: len(target.received) == 3, message="the replayed delivery")
    assert target.received[2].json()["session_id"] == session_id

    def delivered() -> bool:
        browser.get(console + f"/events/{event_id}")
        return "badge-done" in browser.page_source

    wait_until(delivered, interval=0.5, message="the delivery shown as done")

    # reroute: the confirmation shows the plan
    browser.get(console + f"/events/{event_id}/reroute")
    assert "Reroute event" in browser.page_source and "Nothing to do" in browser.page_source
    shots("reroute-confirm")

    # replay all failed since: nothing failed now
    browser.get(console + "/replay-failed?since=1h")
    assert "Nothing to replay" in browser.page_source
    shots("replay-failed-confirm")

    browser.get(console + "/events/evt_0000000000000000000000")
    assert "Not found" in browser.title or "Not found" in browser.page_source
    shots("not-found")

    # a POST without the CSRF token is refused, even with the session cookie
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    assert "suki_console" in cookies
    browser.get(console + f"/events/{event_id}")
    delivery_id = browser.find_element(By.CSS_SELECTOR, "section.delivery .mono").text
    refused = requests.post(console + "/replay", cookies=cookies, timeout=10, data={
        "event": event_id, "delivery": delivery_id}, allow_redirects=False)
    assert refused.status_code == 403
    refused = requests.post(console + f"/events/{event_id}/payload", cookies=cookies,
                            timeout=10, allow_redirects=False)
    assert refused.status_code == 403 and secret_detail not in refused.text
    assert "could not be accepted" in refused.text

    # sign out, and the pages are closed again
    browser.get(console + "/")
    browser.find_element(By.XPATH, "//button[normalize-space()='Sign out']").click()
    wait_until(lambda: "Sign in" in browser.title, message="signed out")
    browser.get(console + "/failed")
    assert browser.current_url.startswith(console + "/login")

    logs = r.logs()
    assert f"user=ops action=replay event_id={event_id}" in logs
    assert f"user=ops action=show payload event_id={event_id}" in logs
    assert secret_detail not in logs

    docs = os.environ.get("SUKI_RELAY_CONSOLE_SCREENSHOT")
    if docs:  # to refresh the README's screenshot: the event page at laptop width
        shutil.copy(shots.folder / "event-laptop.png", docs)
    assert all(p.stat().st_size > 5000 for p in shots.taken)


def test_console_is_404_in_the_browser_when_disabled(browser: Any, relay, sink,  # type: ignore[no-untyped-def]
                                                     tmp_path: Path) -> None:
    r = relay(write_config(tmp_path / "off", sink().url, enabled=False), workers=1, threads=2)
    for path in ("/console", "/console/", "/console/login"):
        assert requests.get(r.url + path, timeout=10).status_code == 404
    browser.get(r.url + "/console/login")
    assert "password" not in browser.page_source.lower()
    assert "not_found" in browser.page_source
