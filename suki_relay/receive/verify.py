"""Verification of one incoming request, apart from any I/O (tested without a server).

Order: content type, size, the two headers, signature, then the replay window, so a
stale request is only told "expired" once it has proved it is authentic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from suki_relay import protocol
from suki_relay.errors import Rejected

_DIGITS = re.compile(r"[0-9]{1,16}")  # ASCII only: \d also matches other scripts' digits
_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Verified:
    generated_at_ms: int
    signature: str  # lowercase hex: with generated_at, the request's identity for de-duplication


def check_content_type(content_type: str | None) -> None:
    mimetype = (content_type or "").split(";", 1)[0].strip().lower()
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise Rejected(415, "unsupported_media_type", "Content-Type must be application/json")


def check_length(content_length: int | None, limit: int) -> None:
    if content_length is not None and content_length > limit:
        raise Rejected(413, "body_too_large", f"body is larger than {limit} bytes")


def generated_at_ms(value: str | None) -> int | None:
    """The `generated-at` header as milliseconds, or None if it is not 1 to 16 ASCII digits
    (the one rule for verifying and for reporting a refusal's clock skew)."""
    value = (value or "").strip()
    return int(value) if _DIGITS.fullmatch(value) else None


def check_headers(generated_at: str | None, api_key: str | None) -> None:
    if not generated_at:
        raise Rejected(401, "missing_generated_at", "generated-at header is missing")
    if generated_at_ms(generated_at) is None:
        raise Rejected(400, "bad_generated_at", "generated-at must be Unix time in milliseconds")
    if not api_key:
        raise Rejected(401, "missing_signature", "X-API-Key header is missing")
    if not _HEX.fullmatch(api_key.strip()):
        raise Rejected(401, "malformed_signature", "X-API-Key must be a hex HMAC-SHA-256")


def verify(
    generated_at: str,
    api_key: str,
    body: bytes,
    secrets: list[str],
    tolerance_seconds: float,
    now: float,
) -> Verified:
    """Check signature then freshness; headers must already have passed check_headers."""
    generated_at = generated_at.strip()
    api_key = api_key.strip()
    if not protocol.matches(secrets, generated_at, body, api_key):
        raise Rejected(401, "bad_signature", "signature does not match")
    ts_ms = int(generated_at)
    if abs(now - ts_ms / 1000.0) > tolerance_seconds:
        raise Rejected(401, "expired", "generated-at is outside the accepted time window")
    return Verified(ts_ms, api_key.lower())
