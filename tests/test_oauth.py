"""OAuth2 client credentials against a token endpoint that reads them as RFC 6749 says."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, unquote_plus

import pytest

from suki_relay.deliver import oauth
from suki_relay.errors import PermanentError
from suki_relay.testing import Received, Reply, Sink

CLIENT_ID = "relay client:1"  # a space and a colon: both must survive Basic
SECRET = "s3cr+et/with=signs%20&more"


def rfc_endpoint(got: Received) -> Reply:
    """client_secret_basic as RFC 6749 2.3.1 decodes it: Basic, then form-decoding of each."""
    basic = {k.lower(): v for k, v in got.headers.items()}.get("authorization", "")
    raw_id, _, raw_secret = base64.b64decode(basic[6:]).decode().partition(":")
    if (unquote_plus(raw_id), unquote_plus(raw_secret)) != (CLIENT_ID, SECRET):
        return Reply(401, b'{"error": "invalid_client"}')
    if parse_qs(got.body.decode()).get("grant_type") != ["client_credentials"]:
        return Reply(400, b'{"error": "unsupported_grant_type"}')
    return Reply(200, json.dumps({"access_token": "TOKEN-1", "token_type": "Bearer"}).encode(),
                 {"Content-Type": "application/json"})


@pytest.mark.parametrize("secret", [SECRET, "plain-secret"])
def test_basic_credentials_are_form_encoded_first(secret: str) -> None:
    with Sink(handler=rfc_endpoint) as endpoint:
        tokens = oauth.credentials({"token_url": endpoint.url + "/token", "client_id": CLIENT_ID,
                                    "client_secret": secret})
        assert tokens is not None
        if secret == SECRET:
            assert tokens.authorization() == "Bearer TOKEN-1"
        else:  # a wrong secret is still refused: the endpoint really checks
            with pytest.raises(PermanentError, match="invalid_client"):
                tokens.authorization()
        sent = base64.b64decode(endpoint.received[0].headers["Authorization"][6:]).decode()
        assert sent.count(":") == 1  # the id's colon is encoded, so the split is unambiguous
