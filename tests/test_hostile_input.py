"""Bad input tried at scale (Hypothesis): generated requests against the in-process
receiver never get a 5xx while the store is up and never log a traceback; generated
actions.yaml documents never make `check` or `serve` print one; generated console inputs
never get a 5xx or miss the security headers.

CI runs a bounded number of examples (EXAMPLES below); for a longer hunt:

    SUKI_RELAY_FUZZ_EXAMPLES=20000 pytest tests/test_hostile_input.py

(docs/promises.md states both numbers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from suki_relay import protocol
from suki_relay.testing import SECRET

from .conftest import LogRecords, cli_here
from .support.relay import LocalRelay

# the relay's background threads (other tests' deliverers: retry jitter) draw from the
# global random module while Hypothesis draws; it warns, and the suite's warnings are errors
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies")

EXAMPLES = int(os.environ.get("SUKI_RELAY_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------- what is generated

# every Unicode class (surrogates are not text JSON can carry in UTF-8; they come as escapes)
TEXT = st.text(st.characters(codec=None, exclude_categories=("Cs",)), max_size=40)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-10**60,
                    max_value=10**60), st.floats(allow_nan=False, allow_infinity=False), TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(TEXT, inner, max_size=5)), max_leaves=30)
STATUSES = st.sampled_from(["success", "failure", "timeout", "cancelled", "", "SUCCESS"])
DOCUMENT_KEYS = st.sampled_from(["status", "session_id", "encounter_id", "_links", "sessions",
                                 "additional_info", "error_code", "generated_at"])
PAYLOADS = st.one_of(
    JSON,
    st.fixed_dictionaries({"status": st.one_of(STATUSES, JSON)},
                          optional={"session_id": st.one_of(TEXT, JSON),
                                    "encounter_id": st.one_of(TEXT, JSON),
                                    "sessions": st.lists(st.one_of(TEXT, JSON), max_size=8),
                                    "_links": JSON, "additional_info": JSON}),
    st.dictionaries(DOCUMENT_KEYS, JSON, max_size=6),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """JSON of every shape (compact or not, escaped or raw UTF-8), huge and deep values,
    and bytes that are not JSON or not UTF-8."""
    kind = draw(st.sampled_from(["json", "json", "json", "deep", "huge", "bytes", "number"]))
    if kind == "deep":
        depth = draw(st.integers(1, 200_000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = draw(st.sampled_from(["1", "", '"x"']))
        return (opener * depth + inner + closer * depth).encode()
    if kind == "huge":
        size = draw(st.integers(1, 900_000))
        return json.dumps({"status": "success", "session_id": "s" * size}).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "number":
        return draw(st.sampled_from([b"1e999999", b"-0", b"9" * 5000, b"NaN", b"Infinity",
                                     b'{"status": 1e999}', b'{"status": "success"} x']))
    payload = draw(PAYLOADS)
    ascii_only = draw(st.booleans())
    return json.dumps(payload, ensure_ascii=ascii_only,
                      indent=draw(st.sampled_from([None, 2]))).encode("utf-8", "surrogatepass")


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                    exclude_characters="\x7f"), max_size=60)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    body = draw(bodies())
    headers: dict[str, str] = {}
    how = draw(st.sampled_from(["signed", "signed", "unsigned", "resigned", "stale"]))
    if how in ("signed", "resigned", "stale"):
        now = time.time() - (10**6 if how == "stale" else 0)
        headers.update(protocol.signed_headers(SECRET, body, now))
        if how == "resigned":  # a valid-looking signature over another body or time
            headers["generated-at"] = draw(st.one_of(HEADER_TEXT, st.integers().map(str)))
    else:
        headers.update({"generated-at": draw(HEADER_TEXT), "X-API-Key": draw(HEADER_TEXT)})
    if draw(st.booleans()):
        headers["Content-Type"] = draw(st.one_of(
            HEADER_TEXT, st.sampled_from(["application/json; charset=latin-1",
                                          "application/json;;", "APPLICATION/JSON"])))
    extra = draw(st.dictionaries(st.sampled_from(["Content-Encoding", "Transfer-Encoding",
                                                  "X-Forwarded-For", "Expect", "Host"]),
                                 HEADER_TEXT, max_size=2))
    headers.update(extra)
    return body, headers


# ---------------------------------------------------------------- the receiver


class Tracebacks(LogRecords):
    def __init__(self) -> None:
        super().__init__()
        self.setLevel(logging.DEBUG)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.stack_info or "Traceback" in record.getMessage():
            self.errors.append(record.getMessage())


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRelay]:
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "actions.yaml"
    path.write_text(yaml.safe_dump({
        "receiver": {"secrets": [SECRET]}, "store": "sqlite:///relay.db",
        "actions": {"hook": {"type": "http", "url": "http://127.0.0.1:9/hook",
                             "body": '{"s": {{ event.session_id | json }}}'}},
        "rules": [{"name": "notes", "when": {"status": "success"}, "do": ["hook"]}],
        "unmatched": []}))
    relay = LocalRelay(path, deliver=False)
    yield relay
    relay.stop()


@pytest.fixture
def tracebacks() -> Iterator[Tracebacks]:
    handler = Tracebacks()
    logger = logging.getLogger()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@FUZZ
@given(request=requests())
def test_the_receiver_never_answers_5xx_nor_logs_a_traceback(
        receiver: LocalRelay, tracebacks: Tracebacks,
        request: tuple[bytes, dict[str, str]]) -> None:
    body, headers = request
    resp = receiver.post(body, headers)
    assert resp.status_code < 500, resp.get_data()
    assert 200 <= resp.status_code < 300 or (resp.json and resp.json.get("error"))
    assert tracebacks.errors == []


# ---------------------------------------------------------------- actions.yaml


def base_config() -> dict[str, Any]:
    return {
        "receiver": {"secrets": [SECRET], "max_body_bytes": 65536},
        "store": "sqlite:///relay.db",
        "suki": {"base_url": "http://127.0.0.1:9", "partner_id": "p", "partner_token": "t"},
        "delivery": {"threads": 2},
        "console": {"enabled": False},
        "actions": {
            "hook": {"type": "http", "url": "http://127.0.0.1:9/x", "body": "{{ event | tojson }}",
                     "retry": {"max_attempts": 3}},
            "notes": {"type": "fetch_note", "directory": "notes", "format": "text"},
            "mail": {"type": "email", "to": ["a@example.org"], "subject": "x",
                     "smtp": {"host": "127.0.0.1", "port": 9}},
        },
        "rules": [{"name": "all", "when": {"status": "success"}, "do": ["hook", "notes"]}],
        "unmatched": ["mail"],
    }


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += paths(v, (*prefix, i))
    return found


def replaced(config: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, *rest = path
    copy = dict(config) if isinstance(config, dict) else list(config)
    copy[head] = replaced(copy[head], tuple(rest), new)
    return copy


YAML_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT,
              st.sampled_from(["${NOPE}", "${file:/nonexistent}", "{{ event.x", "{% for %}",
                               "http://127.0.0.1:9", "sqlite:///", "postgresql://x:y@/z", ""])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(TEXT, st.integers(), st.booleans()),
                                            inner, max_size=4)), max_leaves=20)


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """Any YAML value, or the working config with one part replaced by one."""
    if draw(st.booleans()):
        return draw(YAML_VALUES)
    config = base_config()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(config)))
        config = replaced(config, path, draw(YAML_VALUES))
    return config


@settings(FUZZ, max_examples=max(20, EXAMPLES // 2))
@given(document=documents())
@example(document={**base_config(), "actions": []})  # found by it: a KeyError once
@example(document={**base_config(), "rules": "all"})
@example(document=[base_config()])
def test_check_and_serve_never_print_a_traceback(tmp_path: Path, document: Any) -> None:
    (tmp_path / "actions.yaml").write_text(
        yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
    checked = cli_here("check", cwd=tmp_path)  # an exception would propagate: a failure
    assert checked.returncode in (0, 1, 2)
    assert "Traceback" not in checked.stdout + checked.stderr
    if checked.returncode != 0:  # serve refuses what check refuses, the same way
        served = cli_here("serve", cwd=tmp_path)
        assert served.returncode != 0
        assert "Traceback" not in served.stdout + served.stderr


# ---------------------------------------------------------------- the console


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, str]]:
    """A signed-in browser on a console over PostgreSQL (which refuses a NUL outright),
    or SQLite without it; with one failed delivery to act on."""
    from .conftest import PG_PROBLEM, PG_URL
    from .support.relay import pg_schema
    from .test_console import Relay, config_text, csrf_of, signed_in

    folder = tmp_path_factory.mktemp("console-fuzz")
    with contextlib.ExitStack() as stack:
        if PG_PROBLEM and os.environ.get("CI"):
            pytest.fail(PG_PROBLEM)
        url = "sqlite:///relay.db" if PG_PROBLEM else stack.enter_context(pg_schema(PG_URL))
        (folder / "actions.yaml").write_text(config_text(store=url))
        relay = Relay(LocalRelay(folder / "actions.yaml", deliver=False))
        stack.callback(relay.local.stop)
        event_id = relay.receive()
        relay.fail_all()
        client = signed_in(relay)
        yield client, event_id, csrf_of(client)


CONSOLE_PATHS = st.sampled_from(["/console/", "/console/events", "/console/events/{id}",
                                 "/console/events/{id}/reroute", "/console/events/{id}/payload",
                                 "/console/failed", "/console/replay", "/console/replay-failed",
                                 "/console/login", "/console/logout", "/console/static/{id}",
                                 "/console", "/console/{id}"])
CONSOLE_KEYS = st.sampled_from(["status", "session", "encounter", "since", "matched",
                                "malformed", "recovered", "before", "event", "delivery",
                                "next", "since_ts", "csrf", "username", "password"])
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=("Cs",)), max_size=30)


@FUZZ
@given(path=CONSOLE_PATHS, ident=st.one_of(ANY_TEXT, st.just("{event}")),
       method=st.sampled_from(["GET", "HEAD", "POST"]),
       values=st.dictionaries(st.one_of(CONSOLE_KEYS, ANY_TEXT), ANY_TEXT, max_size=4),
       with_token=st.booleans())
def test_every_console_input_works_or_gets_a_clean_4xx(
        console: tuple[Any, str, str], tracebacks: Tracebacks, path: str, ident: str,
        method: str, values: dict[str, str], with_token: bool) -> None:
    client, event_id, token = console
    ident = event_id if ident == "{event}" else ident
    target = path.replace("{id}", quote(ident, safe=""))
    if method == "POST":
        signs_out = path == "/console/logout"  # the session must last the whole run
        form = {**values, **({"csrf": token} if with_token and not signs_out else {})}
        resp = client.post(target, data=form)
    else:
        resp = client.open(target, method=method, query_string=values)
    assert resp.status_code < 500, (target, resp.status_code)
    assert resp.headers.get("Content-Security-Policy") and resp.headers.get("X-Frame-Options")
    assert tracebacks.errors == []
