"""SMART Backend Services: a signed JWT client assertion in place of a client secret.

The relay holds one or more private keys (RS384: RSA, ES384: EC P-384), each in a PEM file
of its own written by ``suki-relay keys new``. Per token request it signs an assertion
(RFC 7523, as the SMART App Launch "client-confidential-asymmetric" profile and Backend
Services ask): ``iss`` = ``sub`` = the client id, ``aud`` = the token URL, ``exp`` at most
five minutes ahead, a ``jti`` never used before, and ``kid`` (and ``jku`` when configured)
in the header. The first key listed signs; every key listed is published as a JWK Set
(served at ``/.well-known/jwks.json``), so a new key can be published before it signs.

Signing and the JWK encoding are PyJWT's (with ``cryptography``); nothing here is
hand-rolled JOSE. A private key is held in memory only, never in a ``repr``, a log record,
an error message or anything printed: errors name the file and what is wrong with it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suki_relay.errors import PermanentError

ALGORITHMS = ("RS384", "ES384")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 240  # seconds; Epic refuses an exp more than 5 minutes ahead
RSA_BITS = 3072


class KeyProblem(Exception):
    """A key file that cannot be used (the message names the file, never the key)."""


def _jwt() -> Any:
    try:
        import jwt
        from jwt.algorithms import ECAlgorithm, RSAAlgorithm  # noqa: F401  (needs cryptography)
    except ImportError:  # pragma: no cover - a dependency of the package
        raise KeyProblem("PyJWT with cryptography is needed: pip install 'pyjwt[crypto]'") from None
    return jwt


@dataclass(frozen=True)
class SigningKey:
    """One private key, its algorithm and key id. The key object is never in repr()."""

    path: str
    alg: str
    kid: str
    key: Any = field(repr=False, compare=False, hash=False)

    def public_jwk(self) -> dict[str, Any]:
        return public_jwk(self.key, self.alg, self.kid)


def algorithm_of(key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise KeyProblem("an RSA key of fewer than 2048 bits")
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name != "secp384r1":
            raise KeyProblem(f"an EC key on {key.curve.name}; ES384 needs P-384 (secp384r1)")
        return "ES384"
    raise KeyProblem("not an RSA or EC private key")


def load_key(path: Path, alg: str | None = None, kid: str | None = None) -> SigningKey:
    """A private key from a PEM file; KeyProblem names what is wrong (never the key)."""
    _jwt()
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyProblem(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyProblem(f"{path}: not an unencrypted PEM private key") from None
    try:
        found = algorithm_of(key)
    except KeyProblem as exc:
        raise KeyProblem(f"{path}: {exc}") from None
    if alg is not None and alg != found:
        raise KeyProblem(f"{path}: holds a key for {found}, not {alg}")
    return SigningKey(str(path), found, kid or thumbprint(key, found), key)


def loose_permissions(path: Path) -> bool:
    """Whether others than the owner may read the key file."""
    try:
        return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


def public_jwk(key: Any, alg: str, kid: str) -> dict[str, Any]:
    """The public half as a JWK (RFC 7517), with alg, use and kid."""
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    cls = RSAAlgorithm if alg.startswith("RS") else ECAlgorithm
    jwk = cls.to_jwk(key.public_key(), as_dict=True)
    jwk = {k: v for k, v in jwk.items() if k in ("kty", "n", "e", "crv", "x", "y")}
    return {**jwk, "alg": alg, "use": "sig", "kid": kid, "key_ops": ["verify"]}


def thumbprint(key: Any, alg: str) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url): a stable key id."""
    jwk = public_jwk(key, alg, "")
    members = ("e", "kty", "n") if jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(
        b"=").decode()


def jwk_set(keys: list[SigningKey]) -> dict[str, Any]:
    """The JWK Set to publish: every key's public half, once each."""
    seen: dict[str, dict[str, Any]] = {}
    for k in keys:
        seen.setdefault(k.kid, k.public_jwk())
    return {"keys": list(seen.values())}


def new_key(alg: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if alg == "RS384":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    raise KeyProblem(f"expected one of {', '.join(ALGORITHMS)}")


def write_new_key(path: Path, alg: str) -> SigningKey:
    """Write a new private key (PEM, PKCS#8) readable by its owner only; never overwrites."""
    from cryptography.hazmat.primitives import serialization

    key = new_key(alg)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyProblem(f"{path}: exists already (a key is never overwritten)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return SigningKey(str(path), alg, thumbprint(key, alg), key)


def assertion(key: SigningKey, client_id: str, token_url: str, jku: str | None = None,
              now: float | None = None) -> str:
    """A client assertion for one token request (a new jti every time)."""
    jwt = _jwt()
    issued = int(time.time() if now is None else now)
    headers: dict[str, Any] = {"kid": key.kid, "typ": "JWT"}
    if jku:
        headers["jku"] = jku
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "iat": issued,
              "nbf": issued, "exp": issued + ASSERTION_LIFETIME,
              "jti": secrets.token_urlsafe(24)}
    try:
        return str(jwt.encode(claims, key.key, algorithm=key.alg, headers=headers))
    except Exception as exc:  # the key object never goes into the message
        raise PermanentError(f"the client assertion could not be signed "
                             f"({type(exc).__name__})") from None
