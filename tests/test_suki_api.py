"""The Suki API client against a local stand-in: where credentials may go, and what a
reply may cost (one deadline per call, a bounded document)."""

from __future__ import annotations

import gzip
import json
import socket
import threading
from pathlib import Path

import pytest

from suki_relay.deliver import suki_api
from suki_relay.deliver.suki_api import SukiClient, SukiSettings, safe_url
from suki_relay.errors import ConfigError, PermanentError, RetryableError
from suki_relay.testing import (
    RawServer,
    Received,
    Reply,
    Sink,
    build_action,
    drip,
    in_thread,
    wait_until,
)

DOC = {"summary": [{"title": "Assessment", "content": "PHI-NOTE-TEXT"}]}


def stand_in(document: Reply) -> Sink:
    """Logs in anyone; answers every other GET with ``document``."""

    def handle(got: Received) -> Reply:
        if got.path == "/tenant/api/v1/auth/login":
            return Reply(200, b'{"suki_token": "tok-1"}')
        return document

    return Sink(handler=handle)


def client(url: str, timeout: float = 10.0) -> SukiClient:
    return SukiClient(SukiSettings(base_url=url + "/tenant", partner_id="p",
                                   partner_token="pt-SECRET", timeout_seconds=timeout))


@pytest.mark.parametrize("href", [
    "/%2e%2e/other", "/%2E%2E/other", "/api/%2e%2e/%2e%2e/other", "/%252e%252e/other",
    "/api/..%2f..%2fother", "/api/..%5c..%5cother", "/./../other",
])
def test_an_href_cannot_leave_the_base_path_however_encoded(href: str) -> None:
    with stand_in(Reply(200, json.dumps(DOC).encode())) as suki:
        with pytest.raises(PermanentError, match="href refused"):
            client(suki.url).get(href)
        assert all(g.path.startswith("/tenant/") for g in suki.received)
        assert suki.received == []  # refused before any login
    with pytest.raises(PermanentError, match="href refused"):
        safe_url("https://sdp.example/tenant", href)


def test_an_href_under_the_base_path_is_fetched() -> None:
    with stand_in(Reply(200, gzip.compress(json.dumps(DOC).encode()),
                        {"Content-Encoding": "gzip"})) as suki:
        resp = client(suki.url).get("/api/v1/ambient/session/s-1/content?cumulative=true")
        assert resp.json() == DOC
        assert suki.received[-1].path == "/tenant/api/v1/ambient/session/s-1/content?cumulative=true"


def test_a_document_that_never_ends_is_retried_after_the_deadline() -> None:
    endless = drip(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 100000000\r\n\r\n{")

    def script(sock: socket.socket, head: bytes, stopped: threading.Event) -> None:
        if head.startswith(b"POST /tenant/api/v1/auth/login "):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 23\r\nConnection: close\r\n\r\n"
                         b'{"suki_token": "tok-1"}')
        else:
            endless(sock, head, stopped)

    with RawServer(script) as suki:
        c = client(suki.url, timeout=1)
        with pytest.raises(RetryableError, match="did not arrive in full"):
            in_thread(lambda: c.get("/api/v1/ambient/session/s-1/content"))


def test_a_document_over_the_bound_is_a_permanent_failure(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(suki_api, "MAX_DOCUMENT_BYTES", 1024 * 1024)
    bomb = gzip.compress(b'{"summary": "' + b"x" * (8 * 1024 * 1024) + b'"}')
    with (stand_in(Reply(200, bomb, {"Content-Encoding": "gzip"})) as suki,
          pytest.raises(PermanentError, match="larger than 1048576 bytes")):
        client(suki.url).get("/api/v1/ambient/session/s-1/content")


def test_a_base_url_host_failing_idna_is_permanent(tmp_path: Path) -> None:
    base = "http://" + "a" * 64 + ".example"
    with pytest.raises(ConfigError, match="IDNA"):
        build_action("fetch_note", {"directory": "notes"}, tmp_path,
                     suki={"base_url": base, "partner_id": "p", "partner_token": "t"})
    with pytest.raises(PermanentError, match="IDNA"):  # at run time: not retried for a day
        client(base).get("/api/v1/ambient/session/s-1/content")


@pytest.mark.parametrize("token", ["tok-\u2603", "tok\r\nX-Other: 1", "tok one", "tok\x00"])
def test_a_login_answering_an_unusable_token_is_retried_and_not_kept(token: str) -> None:
    """A token no header can carry as it is (beyond ASCII, a line break, a space, a
    control character) is refused at login and never cached: kept, it failed every fetch
    for good for an hour, as a bad host name or refused credentials. The next login's
    sound token is used."""
    logins: list[str] = []

    def handle(got: Received) -> Reply:
        if got.path == "/tenant/api/v1/auth/login":
            logins.append(token if not logins else "tok-2")
            return Reply(200, json.dumps({"suki_token": logins[-1]}).encode())
        ok = got.headers.get("sdp_suki_token") == "tok-2"
        return Reply(200, json.dumps(DOC).encode()) if ok else Reply(401, b"{}")

    with Sink(handler=handle) as suki:
        c = client(suki.url)
        with pytest.raises(RetryableError) as info:
            c.get("/api/v1/ambient/session/s/content")
        assert str(info.value) == "Suki login answered without a usable suki_token"
        assert c.get("/api/v1/ambient/session/s/content").status_code == 200
    assert len(logins) == 2 and len(suki.received) == 3  # nothing sent with the bad one


def test_threads_meeting_an_expired_token_log_in_once() -> None:
    """Eight delivery threads whose token Suki refuses at the same moment: one re-login,
    and every thread retries with the new token (not eight logins racing each other)."""
    logins: list[int] = []
    refused = threading.Event()
    seen_401 = []

    def handle(got: Received) -> Reply:
        if got.path == "/tenant/api/v1/auth/login":
            logins.append(1)
            return Reply(200, json.dumps({"suki_token": f"tok-{len(logins)}"}).encode())
        if got.headers.get("sdp_suki_token") == "tok-1" and refused.is_set():
            seen_401.append(1)
            return Reply(401, b"{}", delay=30)  # held until all eight have been refused
        return Reply(200, json.dumps(DOC).encode())

    with Sink(handler=handle) as suki:
        c = client(suki.url)
        c.get("/api/v1/ambient/session/s/content")  # tok-1, cached
        refused.set()
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(
            c.get("/api/v1/ambient/session/s/content").status_code)) for _ in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: len(seen_401) == 8, message="eight refused requests")
        suki.release()
        for t in threads:
            t.join(30)
    assert results == [200] * 8
    assert len(logins) == 2
