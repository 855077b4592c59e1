"""Signature and request checks, without a server."""

from __future__ import annotations

import time

import pytest

from suki_relay import protocol
from suki_relay.errors import Rejected
from suki_relay.receive import verify

BODY = b'{"status": "failure"}'


def rejected(fn, *args) -> Rejected:  # type: ignore[no-untyped-def]
    with pytest.raises(Rejected) as info:
        fn(*args)
    return info.value


def test_signature_matches_the_documented_recipe() -> None:
    # SIGNING.md: hmac.new(secret, ts + b":" + raw_body, sha256).hexdigest()
    import hashlib
    import hmac

    expected = hmac.new(b"k", b"1700000000000:" + BODY, hashlib.sha256).hexdigest()
    assert protocol.signature("k", "1700000000000", BODY) == expected


@pytest.mark.parametrize("case", [str.lower, str.upper])
def test_hex_in_either_case_verifies(case) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    ts = str(int(now * 1000))
    sig = case(protocol.signature("k", ts, BODY))
    result = verify.verify(ts, sig, BODY, ["k"], 300, now)
    assert result.generated_at_ms == int(ts)
    assert result.signature == sig.lower()


def test_any_configured_secret_verifies_for_rotation() -> None:
    now = time.time()
    ts = str(int(now * 1000))
    sig = protocol.signature("new", ts, BODY)
    verify.verify(ts, sig, BODY, ["old", "new"], 300, now)
    assert rejected(verify.verify, ts, sig, BODY, ["old"], 300, now).reason == "bad_signature"


def test_one_changed_byte_fails() -> None:
    now = time.time()
    ts = str(int(now * 1000))
    sig = protocol.signature("k", ts, BODY)
    r = rejected(verify.verify, ts, sig, BODY + b" ", ["k"], 300, now)
    assert (r.status, r.reason) == (401, "bad_signature")
    r = rejected(verify.verify, str(int(ts) + 1), sig, BODY, ["k"], 300, now)
    assert r.reason == "bad_signature"


@pytest.mark.parametrize("skew", [-301, 301])
def test_outside_the_window_either_way_is_expired(skew: int) -> None:
    now = time.time()
    ts = str(int((now + skew) * 1000))
    sig = protocol.signature("k", ts, BODY)
    r = rejected(verify.verify, ts, sig, BODY, ["k"], 300, now)
    assert (r.status, r.reason) == (401, "expired")


@pytest.mark.parametrize(
    "generated_at, api_key, status, reason",
    [
        (None, "a" * 64, 401, "missing_generated_at"),
        ("", "a" * 64, 401, "missing_generated_at"),
        ("12.5", "a" * 64, 400, "bad_generated_at"),
        ("yesterday", "a" * 64, 400, "bad_generated_at"),
        ("1700000000000", None, 401, "missing_signature"),
        ("1700000000000", "not-hex", 401, "malformed_signature"),
        ("1700000000000", "ab" * 31, 401, "malformed_signature"),
    ],
)
def test_header_problems(generated_at, api_key, status, reason) -> None:  # type: ignore[no-untyped-def]
    r = rejected(verify.check_headers, generated_at, api_key)
    assert (r.status, r.reason) == (status, reason)


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_non_json_content_type_is_415(ctype) -> None:  # type: ignore[no-untyped-def]
    assert rejected(verify.check_content_type, ctype).status == 415


@pytest.mark.parametrize("ctype", ["application/json", "application/json; charset=utf-8",
                                   "Application/JSON"])
def test_json_content_types_pass(ctype: str) -> None:
    verify.check_content_type(ctype)


def test_length_over_limit_is_413() -> None:
    verify.check_length(10, 10)
    assert rejected(verify.check_length, 11, 10).status == 413
