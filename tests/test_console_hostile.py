"""The console under hostile use (issue 21): HEAD, proxies, odd inputs, shared throttling.

Same in-process relay and helpers as tests/test_console.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import LogRecords, check_fails
from .test_console import (  # noqa: F401
    HASH,
    PASSWORD,
    Relay,
    any_relay,
    audits,
    config_text,
    csrf_of,
    form_csrf,
    relay,
    sign_in,
    signed_in,
    start,
)

# ---------------------------------------------------------------- HEAD changes nothing


def test_head_is_get_without_side_effects(relay: Relay, relay_log: LogRecords,  # noqa: F811
                                          start: Callable[..., Relay]) -> None:  # noqa: F811
    """Prefetchers and link checkers send HEAD with the session cookie and no form token:
    werkzeug answers it on every GET route, and it must change nothing."""
    event_id = relay.receive()
    relay.fail_all()
    client = signed_in(relay)
    delivery = relay.store.event(event_id).deliveries[0].delivery.id
    for path in (f"/console/replay?event={event_id}&delivery={delivery}",
                 "/console/replay-failed?since=1h", f"/console/events/{event_id}/reroute"):
        head = client.head(path)
        assert head.status_code == client.get(path).status_code == 200, path
        assert head.data == b""
    assert relay.delivery_states(event_id) == ["failed"]
    assert not audits(relay_log)
    # a reroute that would add a delivery is not made by HEAD either
    rerouting = start(config_text(rules=[{"name": "all", "do": ["ehr", "audit"]}]))
    client = signed_in(rerouting)
    assert client.head(f"/console/events/{event_id}/reroute").status_code == 200
    assert rerouting.delivery_actions(event_id) == ["ehr"] and not audits(relay_log)
    # HEAD signed out: the same redirect to the sign-in page as GET, not a 403
    anonymous = relay.client()
    assert anonymous.head("/console/failed").status_code == 303


# ---------------------------------------------------------------- odd inputs


def test_a_next_with_cr_lf_falls_back_to_the_overview(relay: Relay) -> None:  # noqa: F811
    client = relay.client()
    hostile = "/console/events\r\nSet-Cookie: planted=1"
    page = client.get("/console/login", query_string={"next": hostile})
    assert page.status_code == 200
    signed = client.post("/console/login", query_string={"next": hostile}, data={
        "username": "ops", "password": PASSWORD, "csrf": form_csrf(page.text),
        "next": hostile})
    assert (signed.status_code, signed.headers["Location"]) == (303, "/console/")
    assert "planted" not in str(signed.headers)
    again = client.get("/console/login", query_string={"next": hostile})  # signed in
    assert (again.status_code, again.headers["Location"]) == (303, "/console/")
    tab = client.get("/console/login", query_string={"next": "/console/events\tx"})
    assert tab.headers["Location"] == "/console/"


def test_a_nul_anywhere_gets_a_clean_400(any_relay: Relay,  # noqa: F811
                                         relay_log: LogRecords) -> None:
    event_id = any_relay.receive()
    client = signed_in(any_relay)
    for path in ("/console/events?session=a%00b", "/console/events?status=%00",
                 "/console/events?encounter=x%00", f"/console/events/{event_id}%00",
                 "/console/events/%00/reroute", "/console/replay?event=%00&delivery=d",
                 "/console/replay-failed?since=1%00h", "/console/events?a%00=1",
                 "/console/failed?since=%00"):
        resp = client.get(path)
        assert resp.status_code == 400, path
        assert resp.headers["Content-Security-Policy"] and resp.headers["X-Frame-Options"]
        assert "does not accept" in resp.text
    token = csrf_of(client)
    posted = client.post(f"/console/events/{event_id}/payload",
                         data={"csrf": token, "note": "a\x00b"})
    assert posted.status_code == 400
    anonymous = any_relay.client()
    assert anonymous.get("/console/login?next=%00").status_code == 400
    assert anonymous.post("/console/login", data={"username": "o\x00ps",
                                                  "password": "x"}).status_code == 400
    assert client.get(f"/console/events/{event_id}").status_code == 200  # still works
    assert "Traceback" not in relay_log.text()


# ---------------------------------------------------------------- sign-in throttling


def test_sign_in_failures_are_counted_for_every_worker_and_node(
        tmp_path: Path, start: Callable[..., Relay], store_url: str) -> None:  # noqa: F811
    """Two apps on one store (two workers, or two nodes) share the count: five failures
    split between them slow the name down on both."""
    shared = store_url if store_url.startswith("postgres") else \
        f"sqlite:///{tmp_path / 'shared.db'}"
    a = start(config_text(store=shared), tmp_path / "a")
    b = start(config_text(store=shared), tmp_path / "b")
    for node, n in ((a, 3), (b, 2)):
        client = node.client()
        for _ in range(n):
            assert sign_in(client, password="guess").status_code == 401
    for node in (a, b):
        refused = sign_in(node.client())  # even the right password
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    # names that do not exist, and addresses, are shared the same way
    for node in (a, b, a, b, a):
        assert sign_in(node.client(), user="mallory", password="x").status_code == 401
    assert sign_in(b.client(), user="mallory", password="x").status_code == 429
    assert sign_in(a.client(), user="lee", password="another long password").status_code == 303
    stored = sqlite_or_pg_keys(a)
    assert stored and not any("mallory" in k or "ops" in k or "127.0.0.1" in k for k in stored)


def sqlite_or_pg_keys(node: Relay) -> list[str]:
    with node.store.tx(write=False) as tx:
        return [r["key"] for r in tx.all("SELECT key FROM console_failures")]


def test_while_the_store_cannot_count_this_process_still_does(relay: Relay) -> None:  # noqa: F811
    db = sqlite3.connect(relay.config.base_dir / "relay.db")
    db.execute("ALTER TABLE console_failures RENAME TO failures_away")
    db.commit()
    try:
        client = relay.client()
        for _ in range(5):
            assert sign_in(client, password="guess").status_code == 401
        assert sign_in(client).status_code == 429
    finally:
        db.execute("ALTER TABLE failures_away RENAME TO console_failures")
        db.commit()
        db.close()


# ---------------------------------------------------------------- behind a reverse proxy

PUBLIC = "https://relay.example.org"
BEHIND = {"Host": "127.0.0.1:8000"}  # what the relay sees behind proxy_pass


def proxied_config(**console: Any) -> str:
    return config_text(console={"enabled": True, "users": {"ops": HASH}, **console})


def test_behind_a_proxy_the_console_refuses_its_own_forms_unless_told(
        start: Callable[..., Relay], tmp_path: Path) -> None:  # noqa: F811
    plain = start(proxied_config(), tmp_path / "plain")
    client = plain.client()
    assert sign_in(client, host="127.0.0.1:8000").status_code == 303
    page = client.get("/console/", headers=BEHIND)
    out = client.post("/console/logout", headers={**BEHIND, "Origin": PUBLIC},
                      data={"csrf": form_csrf(page.text)})
    assert out.status_code == 403  # the public name is not the Host the relay sees


@pytest.mark.parametrize("console, forwarded", [
    ({"public_origin": PUBLIC}, {}),
    ({"trusted_proxies": 1}, {"X-Forwarded-Host": "relay.example.org",
                              "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}),
])
def test_a_configured_proxy_setup_accepts_the_public_origin(
        start: Callable[..., Relay], tmp_path: Path, relay_log: LogRecords,  # noqa: F811
        console: dict[str, Any], forwarded: dict[str, str]) -> None:
    node = start(proxied_config(**console), tmp_path / "proxied")
    event_id = node.receive()
    client = node.client()
    headers = {**BEHIND, **forwarded}
    page = client.get("/console/login", headers=headers)
    signed = client.post("/console/login", headers=headers, data={
        "username": "ops", "password": PASSWORD, "csrf": form_csrf(page.text)})
    assert signed.status_code == 303
    assert all("Secure" in c for c in signed.headers.getlist("Set-Cookie"))
    token = form_csrf(client.get("/console/", headers=headers).text)
    other = client.post(f"/console/events/{event_id}/payload",
                        headers={**headers, "Origin": "https://evil.example"},
                        data={"csrf": token})
    assert other.status_code == 403
    shown = client.post(f"/console/events/{event_id}/payload",
                        headers={**headers, "Origin": PUBLIC}, data={"csrf": token})
    assert shown.status_code == 200
    out = client.post("/console/logout", headers={**headers, "Origin": PUBLIC},
                      data={"csrf": token})
    assert out.status_code == 303
    clients = {f.get("client") for msg, f in relay_log.lines if msg == "console sign-in"}
    assert clients == {"203.0.113.9" if forwarded else "127.0.0.1"}


def test_forwarded_headers_are_not_believed_unless_configured(relay: Relay,  # noqa: F811
                                                              relay_log: LogRecords) -> None:
    client = relay.client()
    spoofed = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Host": "relay.example.org"}
    page = client.get("/console/login", headers=spoofed)
    client.post("/console/login", headers=spoofed, data={
        "username": "ops", "password": PASSWORD, "csrf": form_csrf(page.text)})
    assert {f.get("client") for msg, f in relay_log.lines if msg == "console sign-in"} == \
        {"127.0.0.1"}


def test_redirects_never_name_the_host_header(relay: Relay) -> None:  # noqa: F811
    client = relay.client()
    resp = client.get("/console", headers={"Host": "evil.example"})
    assert resp.status_code in (301, 308) and resp.headers["Location"] == "/console/"
    signed_out = client.get("/console/failed?x=1", headers={"Host": "evil.example"})
    assert signed_out.headers["Location"].startswith("/console/login?")


@pytest.mark.parametrize("origin", ["relay.example.org", "https://relay.example.org/",
                                    "https://relay.example.org/console", "ftp://x",
                                    "https://user@relay.example.org"])
def test_a_public_origin_must_be_an_origin(tmp_path: Path, origin: str) -> None:
    problems = check_fails(tmp_path, proxied_config(public_origin=origin))
    assert "console.public_origin" in problems and "no path" in problems
