"""The operator console in process (werkzeug's test Client against the relay's WSGI app):
sign-in, sessions, CSRF, throttling, headers, audit lines, and each page and action.

The browser tests (tests/system/test_console_browser.py) drive the same console in Chromium against a
real gunicorn; these cover the many security cases quickly.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from werkzeug.security import check_password_hash
from werkzeug.test import Client, TestResponse

from suki_relay.config.load import parse_config
from suki_relay.console import views
from suki_relay.console.auth import Throttle, hash_password
from suki_relay.errors import ConfigError
from suki_relay.store import FAILED, NewEvent, Outcome
from suki_relay.testing import SECRET, unique_body

from .conftest import LocalRelay, LogRecords, cli_here

PASSWORD = "correct horse battery staple"
HASH = hash_password(PASSWORD)
OTHER_HASH = hash_password("another long password")


def config_text(console: dict[str, Any] | None = None, rules: list[Any] | None = None,
                store: str = "sqlite:///relay.db") -> str:
    config = {
        "receiver": {"secrets": [SECRET]},
        "store": store,
        "actions": {"ehr": {"type": "http", "url": "http://127.0.0.1:9/ehr"},
                    "audit": {"type": "http", "url": "http://127.0.0.1:9/audit"}},
        "rules": rules if rules is not None else [{"name": "all", "do": ["ehr"]}],
        "console": {"enabled": True, "users": {"ops": HASH, "lee": OTHER_HASH}}
        if console is None else console,
    }
    return json.dumps(config)


class Relay:
    """A relay in this process (LocalRelay, without delivery threads), and what these tests
    do with it: several browsers (test Clients), events received, deliveries failed."""

    def __init__(self, local: LocalRelay):
        self.local = local
        self.app, self.store, self.config = local.app, local.store, local.config

    def client(self) -> Client:
        """A browser of its own (its own cookies), on this machine as gunicorn would say."""
        def from_loopback(environ: Any, start_response: Any) -> Any:
            environ.setdefault("REMOTE_ADDR", "127.0.0.1")
            return self.app(environ, start_response)

        return Client(from_loopback)

    def receive(self, body: bytes | None = None) -> str:
        return self.local.accept(body or unique_body("failure"))

    def fail_all(self) -> None:
        """Attempt every due delivery once, and fail it for good (as a dead target would)."""
        claimed, _ = self.store.claim("test", 100, 30, {"ehr": 10, "audit": 10})
        now = time.time()
        self.store.finish([(c, "test", Outcome("failed", now, 0.01, FAILED, http_status=500,
                                               error="HTTP 500 from target"))
                           for c in claimed])

    def delivery_states(self, event_id: str) -> list[str]:
        return [dd.delivery.state for dd in self.store.event(event_id).deliveries]

    def delivery_actions(self, event_id: str) -> list[str]:
        return sorted(dd.delivery.action for dd in self.store.event(event_id).deliveries)


@pytest.fixture
def start(tmp_path: Path, local_relay: Callable[..., LocalRelay]) -> Callable[..., Relay]:
    """A relay on the config ``text`` (default: config_text()) in ``folder``."""

    def start(text: str | None = None, folder: Path = tmp_path) -> Relay:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "actions.yaml"
        path.write_text(text or config_text())
        return Relay(local_relay(path, deliver=False))

    return start


@pytest.fixture
def relay(start: Callable[..., Relay]) -> Relay:
    return start()


@pytest.fixture
def any_relay(start: Callable[..., Relay], store_url: str) -> Relay:
    """The relay on each store backend (SQLite, PostgreSQL)."""
    return start(config_text(store=store_url))


def audits(log: LogRecords) -> list[dict[str, Any]]:
    """The console's audit lines, as their fields."""
    return [fields for msg, fields in log.lines if msg == "console audit"]


def form_csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the form"
    return found.group(1)


def sign_in(client: Client, user: str = "ops", password: str = PASSWORD,
            host: str = "localhost") -> TestResponse:
    page = client.get("/console/login", headers={"Host": host})
    return client.post("/console/login", headers={"Host": host}, data={
        "username": user, "password": password, "csrf": form_csrf(page.text)})


def signed_in(relay: Relay) -> Client:
    client = relay.client()
    assert sign_in(client).status_code == 303
    return client


def csrf_of(client: Client, path: str = "/console/") -> str:
    return form_csrf(client.get(path).text)


# ---------------------------------------------------------------- off by default


def test_console_is_404_when_disabled_or_not_configured(start: Callable[..., Relay],
                                                         tmp_path: Path) -> None:
    for i, console in enumerate(({"enabled": False, "users": {"ops": HASH}}, {})):
        relay = start(config_text(console), tmp_path / str(i))
        client = relay.client()
        for path in ("/console", "/console/", "/console/login", "/console/static/console.css"):
            assert client.get(path).status_code == 404, path
        assert client.post("/console/login", data={"username": "ops"}).status_code == 404


def test_console_moves_with_its_path_and_leaves_other_paths_alone(
        start: Callable[..., Relay]) -> None:
    relay = start(config_text({"enabled": True, "path": "/ops/relay", "users": {"ops": HASH}}))
    client = relay.client()
    assert client.get("/console/").status_code == 404
    assert client.get("/ops/relayx").status_code == 404  # only the prefix and below
    assert client.get("/ops/relay/login").status_code == 200
    assert client.get("/ops/relay").status_code in (301, 308)
    assert client.get("/healthz").status_code == 200


# ---------------------------------------------------------------- sign-in and sessions


def test_every_page_needs_a_session(relay: Relay) -> None:
    event_id = relay.receive()
    client = relay.client()
    for path in ("/console/", "/console/events", f"/console/events/{event_id}",
                 "/console/failed", f"/console/events/{event_id}/reroute",
                 f"/console/replay?event={event_id}&delivery=x", "/console/replay-failed?since=1h"):
        resp = client.get(path)
        assert resp.status_code == 303, path
        assert resp.headers["Location"].startswith("/console/login?next="), path
        login = client.get(resp.headers["Location"]).text
        assert 'name="password"' in login and 'aria-label="Console"' not in login, path
    for path in (f"/console/events/{event_id}/payload", "/console/replay", "/console/logout",
                 f"/console/events/{event_id}/reroute", "/console/replay-failed"):
        resp = client.post(path, data={"event": event_id})
        assert resp.status_code == 403, path
        assert "session_id" not in resp.text


def test_wrong_password_refused_right_one_gets_in(relay: Relay, relay_log: LogRecords) -> None:
    client = relay.client()
    wrong = sign_in(client, password="not the password")
    assert wrong.status_code == 401
    assert "Wrong user name or password" in wrong.text
    assert "suki_console=" not in wrong.headers.get("Set-Cookie", "").replace(
        "suki_console_login=", "")
    unknown = sign_in(client, user="mallory")
    assert unknown.status_code == 401

    ok = sign_in(client)
    assert ok.status_code == 303 and ok.headers["Location"] == "/console/"
    cookie = next(c for c in ok.headers.getlist("Set-Cookie") if c.startswith("suki_console="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console/" in cookie
    assert "Secure" not in cookie  # served on loopback
    page = client.get("/console/")
    assert page.status_code == 200 and "Overview" in page.text and "ops" in page.text
    messages = relay_log.lines
    assert ("console sign-in failed", {"user": "ops", "client": "127.0.0.1"}) in messages
    assert ("console sign-in failed", {"user": "(unknown)", "client": "127.0.0.1"}) in messages
    assert not any(PASSWORD in str(f) or "not the password" in str(f) for _, f in messages)


def test_cookie_is_secure_unless_served_on_loopback(relay: Relay) -> None:
    client = relay.client()
    resp = sign_in(client, host="relay.example.com")
    assert resp.status_code == 303
    assert all("Secure" in c for c in resp.headers.getlist("Set-Cookie"))
    # a proxy on this machine: loopback addresses, but a forwarding header says otherwise
    page = client.get("/console/login", headers={"X-Forwarded-For": "203.0.113.9"})
    assert "Secure" in page.headers["Set-Cookie"]


def test_sign_in_form_needs_its_csrf_token(relay: Relay) -> None:
    client = relay.client()
    client.get("/console/login")
    resp = client.post("/console/login", data={"username": "ops", "password": PASSWORD})
    assert resp.status_code == 403
    assert client.get("/console/").status_code == 303  # not signed in
    resp = client.post("/console/login", data={"username": "ops", "password": PASSWORD,
                                                "csrf": "\u00e9"})  # non-ASCII: was a 500
    assert resp.status_code == 403


def test_forged_expired_or_revoked_sessions_are_refused(relay: Relay, tmp_path: Path,
                                                        start: Callable[..., Relay]) -> None:
    keys = relay.app.console.keys
    good = keys.issue("ops")
    assert keys.session(good) is not None
    body, mac = good.split(".")
    forged_body = body[:-2] + ("AA" if body[-2:] != "AA" else "BB")
    assert keys.session(f"{forged_body}.{mac}") is None
    assert keys.session(f"{body}.{mac[:-1]}x") is None
    assert keys.session(f"{body}.{mac[:-1]}\u00e9") is None  # non-ASCII: no TypeError
    assert keys.session(keys.issue("ops", now=time.time() - 9 * 3600)) is None  # 8 h sessions
    assert keys.session("garbage") is None and keys.session("a.b") is None
    lee = keys.issue("lee")
    assert keys.session(lee).user == "lee"
    # a session cookie does not carry over to another user or a changed password
    changed = config_text({"enabled": True, "users": {"ops": hash_password("a new password!"),
                                                      "lee": OTHER_HASH}})
    relay = start(changed, tmp_path / "changed")
    assert relay.app.console.keys.session(good) is None
    assert relay.app.console.keys.session(lee) is not None
    client = relay.client()
    client.set_cookie("suki_console", good, path="/console/")
    assert client.get("/console/").status_code == 303


def test_sessions_hold_across_workers_and_nodes(tmp_path: Path,
                                               start: Callable[..., Relay]) -> None:
    """Two apps built from the same config (two workers, or two nodes) accept each other's
    sessions; another webhook secret or session_secret does not."""
    a, b = start(folder=tmp_path / "a"), start(folder=tmp_path / "b")
    cookie = a.app.console.keys.issue("ops")
    assert b.app.console.keys.session(cookie) is not None
    other = json.loads(config_text())
    other["receiver"]["secrets"] = ["another-secret"]
    c = start(json.dumps(other), tmp_path / "c")
    assert c.app.console.keys.session(cookie) is None
    other["console"]["session_secret"] = "s" * 40
    d = start(json.dumps(other), tmp_path / "d")
    assert d.app.console.keys.session(d.app.console.keys.issue("ops")) is not None
    assert d.app.console.keys.session(cookie) is None


def test_logout_ends_the_session_in_the_browser(relay: Relay) -> None:
    client = signed_in(relay)
    resp = client.post("/console/logout", data={"csrf": csrf_of(client)})
    assert resp.status_code == 303 and "/console/login" in resp.headers["Location"]
    assert 'suki_console=;' in resp.headers["Set-Cookie"]
    assert "Max-Age=0" in resp.headers["Set-Cookie"]
    assert client.get("/console/").status_code == 303


def test_a_signed_out_session_is_refused_everywhere_even_with_a_copied_cookie(
        any_relay: Relay, start: Callable[..., Relay], store_url: str, tmp_path: Path) -> None:
    """Signing out ends the session itself, not only the browser's cookie: a copy of the
    cookie (another tab, a stolen one) is refused afterwards, by every process on the
    same store (another worker, another node), while the user's other sessions go on."""
    client = signed_in(any_relay)
    cookie = client.get_cookie("suki_console", path="/console/").value
    other_session = signed_in(any_relay)
    copy = any_relay.client()
    copy.set_cookie("suki_console", cookie, path="/console/")
    assert copy.get("/console/").status_code == 200
    client.post("/console/logout", data={"csrf": csrf_of(client)})
    assert copy.get("/console/").status_code == 303  # to the sign-in page
    assert copy.post("/console/replay", data={"csrf": "x"}).status_code == 403
    assert other_session.get("/console/").status_code == 200
    # another worker on the same SQLite file; another node on the same PostgreSQL
    elsewhere = start(config_text(store=store_url),
                      tmp_path if store_url.startswith("sqlite") else tmp_path / "node-b")
    assert elsewhere.store is not any_relay.store
    stolen = elsewhere.client()
    stolen.set_cookie("suki_console", cookie, path="/console/")
    assert stolen.get("/console/").status_code == 303
    # the sign-in page shows its form (no redirect back and forth) and drops the cookie
    form = stolen.get("/console/login")
    assert form.status_code == 200 and 'name="password"' in form.text
    assert any(h.startswith("suki_console=;") and "Max-Age=0" in h
               for h in form.headers.getlist("Set-Cookie"))
    # kept only until the session would have expired anyway
    any_relay.store.sign_out("long-gone", time.time() - 1)
    any_relay.store.sign_out("still-valid", time.time() + 3600)
    assert not any_relay.store.signed_out("long-gone")
    assert any_relay.store.signed_out("still-valid")


def test_sign_out_while_the_store_is_down_still_signs_out_this_browser(
        relay: Relay, relay_log: LogRecords) -> None:
    import sqlite3

    event_id = relay.receive()
    client = signed_in(relay)
    csrf = csrf_of(client)
    db = sqlite3.connect(relay.config.base_dir / "relay.db")
    db.execute("ALTER TABLE console_signouts RENAME TO signouts_away")  # cannot record it
    db.commit()
    try:
        # nobody can tell whether this session was signed out elsewhere: reading pages
        # (which need the store anyway) is one thing, a change or a payload is refused
        for path in ("/console/replay-failed", f"/console/events/{event_id}/payload"):
            refused = client.post(path, data={"csrf": csrf, "since": "1"})
            assert refused.status_code == 503, path
            assert "Nothing was changed" in refused.text
        resp = client.post("/console/logout", data={"csrf": csrf})
    finally:
        db.execute("ALTER TABLE signouts_away RENAME TO console_signouts")
        db.commit()
        db.close()
    assert resp.status_code == 303 and "Max-Age=0" in resp.headers["Set-Cookie"]
    page = client.get(resp.headers["Location"])
    assert "signed out in this browser only" in page.text
    assert client.get("/console/").status_code == 303
    assert ("console sign-out", {"user": "ops", "recorded": False}) in relay_log.lines


def test_after_sign_in_only_console_paths_are_followed(relay: Relay) -> None:
    for target, expected in (("/console/failed", "/console/failed"),
                             ("//evil.example/console/", "/console/"),
                             ("https://evil.example/console/", "/console/"),
                             ("/elsewhere", "/console/"),
                             ("/console/\\evil", "/console/")):
        client = relay.client()
        page = client.get("/console/login")
        resp = client.post("/console/login", data={"username": "ops", "password": PASSWORD,
                                                   "csrf": form_csrf(page.text),
                                                   "next": target})
        assert resp.headers["Location"] == expected, target


def test_repeated_failures_are_refused_at_once_without_checking(relay: Relay) -> None:
    client = relay.client()
    for _ in range(5):
        assert sign_in(client, password="guess").status_code == 401
    refused = sign_in(client)  # even the right password: the name is slowed down
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert "Too many failed sign-ins" in refused.text
    assert sign_in(client, user="lee", password="another long password").status_code == 303
    # a name that does not exist is slowed down the same way: a 429 does not tell names apart
    client = relay.client()
    for _ in range(5):
        assert sign_in(client, user="mallory", password="guess").status_code == 401
    assert sign_in(client, user="mallory", password="guess").status_code == 429


def test_throttle_doubles_caps_and_forgets() -> None:
    t = Throttle(free=2, longest=10, max_keys=3)
    t.failed(["k"], now=0)
    assert t.wait(["k"], now=0) == 0
    t.failed(["k"], now=0)
    assert t.wait(["k"], now=0) == 1
    t.failed(["k"], now=1)
    assert t.wait(["k"], now=1) == 2
    for i in range(10):
        t.failed(["k"], now=100 + i)
    assert t.wait(["k"], now=109) == 10  # capped
    t.succeeded(["k"])
    assert t.wait(["k"], now=109) == 0
    for key in "abcd":
        t.failed([key], now=0)
    assert len(t._failures) == 3  # bounded memory


# ---------------------------------------------------------------- every response


def test_security_headers_on_every_response(relay: Relay) -> None:
    event_id = relay.receive()
    client = signed_in(relay)
    anonymous = relay.client()
    responses = [anonymous.get("/console/login"), anonymous.get("/console/"),
                 anonymous.get("/console/static/console.css"), anonymous.get("/console/nope")]
    responses += [client.get(p) for p in ("/console/", "/console/events", "/console/failed",
                                          f"/console/events/{event_id}", "/console/events/x")]
    responses.append(client.post(f"/console/events/{event_id}/payload", data={}))
    for resp in responses:
        assert resp.headers["Cache-Control"] == "no-store", resp.request.path
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert resp.headers["X-Frame-Options"] == "DENY"
    for resp in responses:
        if resp.mimetype == "text/html":
            assert "<script>" not in resp.text and " on" + "click=" not in resp.text
            assert "style=" not in resp.text


# ---------------------------------------------------------------- CSRF


def test_post_without_csrf_token_is_refused(relay: Relay, relay_log: LogRecords) -> None:
    event_id = relay.receive()
    relay.fail_all()
    client = signed_in(relay)
    delivery = relay.store.event(event_id).deliveries[0].delivery.id
    for data in ({"event": event_id, "delivery": delivery},
                 {"event": event_id, "delivery": delivery, "csrf": "forged"}):
        resp = client.post("/console/replay", data=data)
        assert resp.status_code == 403 and "could not be accepted" in resp.text
    token = csrf_of(client)
    other_site = client.post("/console/replay", headers={"Origin": "https://evil.example"},
                             data={"event": event_id, "delivery": delivery, "csrf": token})
    assert other_site.status_code == 403
    assert relay.delivery_states(event_id) == ["failed"]
    assert client.post(f"/console/events/{event_id}/payload").status_code == 403
    assert not audits(relay_log)
    # another user's token does not work either
    lee = relay.client()
    sign_in(lee, user="lee", password="another long password")
    assert csrf_of(lee) != token
    ok = client.post("/console/replay", data={"event": event_id, "delivery": delivery,
                                              "csrf": token})
    assert ok.status_code == 200
    assert relay.delivery_states(event_id) == ["pending"]


# ---------------------------------------------------------------- pages and actions


def test_payload_only_after_show_payload_and_audited(relay: Relay,
                                                     relay_log: LogRecords) -> None:
    body = unique_body("failure")
    session_id = json.loads(body)["session_id"]
    event_id = relay.receive(body)
    client = signed_in(relay)
    page = client.get(f"/console/events/{event_id}")
    assert page.status_code == 200
    assert "Error in transcription" not in page.text and "ERROR_CODE" not in page.text
    assert "Show payload" in page.text
    shown = client.post(f"/console/events/{event_id}/payload", data={"csrf": form_csrf(page.text)})
    assert shown.status_code == 200
    assert "Error in transcription" in shown.text and session_id in shown.text
    assert [(a["user"], a["action"], a["event_id"]) for a in audits(relay_log)] == \
        [("ops", "show payload", event_id)]
    assert "transcription" not in relay_log.text()


def test_event_detail_lists_deliveries_and_every_attempt(relay: Relay) -> None:
    event_id = relay.receive()
    relay.fail_all()
    client = signed_in(relay)
    page = client.get(f"/console/events/{event_id}").text
    assert "ehr" in page and "badge-failed" in page
    assert "HTTP 500 from target" in page and ">500<" in page and "10 ms" in page
    assert client.get("/console/events/evt_missing").status_code == 404


def test_hostile_ids_are_shown_escaped(relay: Relay) -> None:
    """A signed payload's id with a bidirectional override and a terminal escape is shown
    as escapes: it cannot reorder or hide what the operator reads."""
    hostile = "S1\u202eevil\x1b[31m"
    event_id = relay.receive(unique_body("failure", session_id=hostile))
    client = signed_in(relay)
    for path in (f"/console/events/{event_id}", "/console/events"):
        page = client.get(path).text
        assert "S1\\u202eevil\\x1b[31m" in page
        assert "\u202e" not in page and "\x1b" not in page


def test_replay_one_failed_delivery_confirms_then_reopens(relay: Relay,
                                                          relay_log: LogRecords) -> None:
    event_id = relay.receive()
    relay.fail_all()
    client = signed_in(relay)
    failed = client.get("/console/failed").text
    delivery = relay.store.event(event_id).deliveries[0].delivery.id
    link = f"/console/replay?event={event_id}&amp;delivery={delivery}"
    assert link in failed
    confirm = client.get(link.replace("&amp;", "&"))
    assert confirm.status_code == 200 and "Replay this delivery?" in confirm.text
    assert relay.delivery_states(event_id) == ["failed"]  # a GET changes nothing
    done = client.post("/console/replay", data={"event": event_id, "delivery": delivery,
                                                "csrf": form_csrf(confirm.text)})
    assert done.status_code == 200 and "pending" in done.text
    assert relay.delivery_states(event_id) == ["pending"]
    assert [(a["user"], a["action"], a["event_id"]) for a in audits(relay_log)] == \
        [("ops", "replay", event_id)]
    wrong = client.post("/console/replay", data={"event": event_id, "delivery": "dlv_other",
                                                 "csrf": form_csrf(confirm.text)})
    assert wrong.status_code == 409


def test_replay_all_failed_since(relay: Relay, relay_log: LogRecords) -> None:
    events = [relay.receive() for _ in range(3)]
    relay.fail_all()
    client = signed_in(relay)
    confirm = client.get("/console/replay-failed?since=1h")
    assert confirm.status_code == 200 and "Replay 3 failed deliveries?" in confirm.text
    assert client.get("/console/replay-failed?since=yesterday").status_code == 400
    nan = client.post("/console/replay-failed", data={"since_ts": "nan",
                                                      "csrf": form_csrf(confirm.text)})
    assert nan.status_code == 400
    since_ts = re.search(r'name="since_ts" value="([^"]+)"', confirm.text).group(1)
    done = client.post("/console/replay-failed", data={"since_ts": since_ts, "since": "1h",
                                                       "csrf": form_csrf(confirm.text)})
    assert done.status_code == 200 and "3 failed deliveries are pending again" in done.text
    assert all(relay.delivery_states(e) == ["pending"] for e in events)
    assert sorted(a["event_id"] for a in audits(relay_log)) == \
        sorted(events)


def test_reroute_shows_the_plan_then_adds_deliveries(relay: Relay, tmp_path: Path,
                                                     relay_log: LogRecords,
                                                     start: Callable[..., Relay]) -> None:
    event_id = relay.receive()
    # the rules change (the same store, as after a reload)
    relay = start(config_text(rules=[{"name": "all", "do": ["ehr", "audit"]}]))
    client = signed_in(relay)
    confirm = client.get(f"/console/events/{event_id}/reroute")
    assert confirm.status_code == 200 and "Add 1 delivery" in confirm.text
    assert relay.delivery_actions(event_id) == ["ehr"]
    done = client.post(f"/console/events/{event_id}/reroute",
                       data={"csrf": form_csrf(confirm.text)})
    assert done.status_code == 200 and "Planned 1 new delivery: audit" in done.text
    assert relay.delivery_actions(event_id) == ["audit", "ehr"]
    assert [(a["action"], a["event_id"]) for a in audits(relay_log)] == [("reroute", event_id)]


def test_events_filters_and_pagination(any_relay: Relay,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    relay = any_relay
    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    ids = [relay.receive(unique_body(s)) for s in ("failure", "timeout", "success", "failure")]
    malformed = b'["not an object"]'
    client = signed_in(relay)
    assert relay.local.post_signed(malformed).status_code == 400

    def listed(query: str) -> list[str]:
        page = client.get(f"/console/events?{query}")
        assert page.status_code == 200, page.text
        return re.findall(r'href="/console/events/(evt_[0-9a-f]+)"', page.text)

    (bad_id,) = listed("malformed=yes")
    first = client.get("/console/events?malformed=no").text
    assert listed("malformed=no") == [ids[3], ids[2]]
    older = re.search(r'href="/console/events\?([^"]+)" rel="next"', first).group(1)
    assert listed(older.replace("&amp;", "&")) == [ids[1], ids[0]]
    assert listed("status=failure") == [ids[3], ids[0]]
    session = relay.store.event(ids[1]).event.session_id
    assert listed(f"session={session}") == [ids[1]]
    assert listed("matched=no") == [bad_id]  # a malformed body matches no rule
    assert listed("matched=no&malformed=no") == []
    assert listed("since=1h&malformed=no&status=timeout") == [ids[1]]
    recovered = NewEvent("recovered:r1", b'{"status": "success", "session_id": "r1"}', None,
                         "success", "r1", None, False, [], [], recovered=True)
    relay.store.record_recovered(recovered)
    assert listed("recovered=yes") == [recovered.id]
    assert recovered.id not in listed("recovered=no&malformed=no")
    assert "badge-recovered" in client.get("/console/events?recovered=yes").text
    bad = client.get("/console/events?since=last+tuesday")
    assert bad.status_code == 400 and "cannot read time" in bad.text


def test_overview_shows_the_figures(any_relay: Relay) -> None:
    relay = any_relay
    for _ in range(2):
        relay.receive()
    relay.fail_all()
    relay.receive()
    page = signed_in(relay).get("/console/").text
    assert re.search(r"<dd>3</dd>\s*</div>\s*<div><dt>last 24 hours", page) or ">3<" in page
    assert "Review and replay" in page
    assert "<dd>ready" in page and relay.config.store_url.split(":")[0] in page
    assert re.search(r"version [0-9a-f]{12}", page)
    spooling = relay.config.store_url.startswith("postgres")  # the spool stands in for it
    assert ("<dt>Spool</dt><dd>empty</dd>" in page) == spooling


# ---------------------------------------------------------------- configuration


def test_config_problems_are_reported(tmp_path: Path) -> None:
    def problems(console: Any) -> str:
        with pytest.raises(ConfigError) as exc:
            parse_config(config_text(console), tmp_path / "actions.yaml")
        return "\n".join(str(p) for p in exc.value.problems)

    assert "has no users" in problems({"enabled": True})
    assert "never a password" in problems({"enabled": True, "users": {"ops": "hunter2"}})
    assert "console.path" in problems({"enabled": True, "path": "console/",
                                       "users": {"ops": HASH}})
    assert "webhook or metrics" in problems({"enabled": True, "path": "/webhooks/notification",
                                             "users": {"ops": HASH}})
    assert "session_hours" in problems({"enabled": True, "session_hours": 0,
                                        "users": {"ops": HASH}})
    assert "unknown option" in problems({"enabled": True, "password": "x",
                                         "users": {"ops": HASH}})
    assert "hunter2" not in problems({"enabled": True, "users": {"ops": "hunter2"}})


def test_console_password_prints_a_scrypt_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    result = cli_here("console-password", "--stdin")
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert printed.startswith("scrypt:") and check_password_hash(printed, "a long enough password")
    assert "a long enough password" not in result.stdout
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    short = cli_here("console-password", "--stdin")
    assert short.returncode == 1 and "12 characters" in short.stderr


def test_sign_in_is_refused_not_queued_while_password_checks_are_busy(relay: Relay) -> None:
    checking = relay.app.console.checking
    while checking.acquire(blocking=False):  # every password check slot taken
        pass
    client = relay.client()
    busy = sign_in(client)
    assert busy.status_code == 429 and "busy" in busy.text and busy.headers["Retry-After"]
    checking.release()
    assert sign_in(client).status_code == 303


def test_store_outage_shows_a_503_page_and_the_overview_says_so(relay: Relay) -> None:
    import sqlite3

    event_id = relay.receive()
    client = signed_in(relay)
    db = sqlite3.connect(relay.config.base_dir / "relay.db")
    db.execute("ALTER TABLE events RENAME TO events_away")  # the store cannot answer
    db.execute("ALTER TABLE console_signouts RENAME TO signouts_away")  # nor say who left
    db.commit()
    try:
        for path in ("/console/events", f"/console/events/{event_id}", "/console/failed"):
            resp = client.get(path)
            assert resp.status_code == 503, path
            assert "cannot be reached" in resp.text and "Traceback" not in resp.text
            assert resp.headers["Cache-Control"] == "no-store"
        overview = client.get("/console/")
        assert overview.status_code == 200 and "cannot be read right now" in overview.text
    finally:
        db.execute("ALTER TABLE events_away RENAME TO events")
        db.execute("ALTER TABLE signouts_away RENAME TO console_signouts")
        db.commit()
        db.close()
    assert client.get(f"/console/events/{event_id}").status_code == 200


def test_users_hashes_from_secret_files(start: Callable[..., Relay], tmp_path: Path) -> None:
    """As the README says to configure it: each hash in a file of its own."""
    secret = tmp_path / "console-ops"
    secret.write_text(HASH + "\n")
    secret.chmod(0o600)
    config = json.loads(config_text())
    config["console"]["users"] = {"ops": f"${{file:{secret}}}"}
    relay = start(json.dumps(config), tmp_path / "relay")
    assert sign_in(relay.client()).status_code == 303
    assert cli_here("-c", str(tmp_path / "relay" / "actions.yaml"), "check").returncode == 0
