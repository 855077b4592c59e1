"""Tracing with OpenTelemetry's in-memory exporter: one trace per event (the receipt,
with verify and record in it, and each delivery attempt, linked across retries),
``traceparent`` on what an attempt sends, and no PHI or payload id in any attribute."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest

from suki_relay import protocol, tracing
from suki_relay.testing import Reply, unique_body, wait_until

from .conftest import http_action

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

PHI = "PHI-NOTE-TEXT-7d1"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.use_exporter(exporter)
    yield exporter
    tracing.use_exporter(None)
    tracing.shutdown()


def _hex(n: int, width: int) -> str:
    return f"{n:0{width}x}"


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_one_trace_per_event_across_retries(write_config: Any, local_relay: Any, sink: Any,
                                            spans: InMemorySpanExporter) -> None:
    target = sink(replies=[Reply(503), Reply(503)], default=Reply(200))
    relay = local_relay(write_config({
        "tracing": {"enabled": True, "service_name": "relay-under-test"},
        "actions": {"ehr": http_action(target.url, retry={"initial_seconds": 0.1,
                                                          "max_seconds": 0.2})},
        "rules": [{"name": "all", "do": ["ehr"]}]}))
    body = unique_body("failure", note=PHI)
    session_id = json.loads(body)["session_id"]
    event_id = relay.accept(body)
    wait_until(lambda: len(target.received) == 3, message="two failures and a success")
    wait_until(lambda: len([s for s in spans.get_finished_spans()
                            if s.name == "suki_relay.attempt"]) == 3, message="three attempts")
    finished = spans.get_finished_spans()
    by_name: dict[str, list[Any]] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    [receipt] = by_name["suki_relay.receive"]
    [verify] = by_name["suki_relay.verify"]
    [record] = by_name["suki_relay.record"]
    attempts = sorted(by_name["suki_relay.attempt"], key=lambda s: s.attributes["suki_relay.attempt"])

    trace_id = receipt.context.trace_id
    assert receipt.parent is None and receipt.attributes["suki_relay.event_id"] == event_id
    assert receipt.resource.attributes["service.name"] == "relay-under-test"
    assert verify.parent.span_id == record.parent.span_id == receipt.context.span_id
    assert verify.end_time <= record.start_time
    for n, span in enumerate(attempts, start=1):
        assert span.context.trace_id == trace_id  # one trace for the event
        assert span.parent.span_id == receipt.context.span_id
        assert span.attributes["suki_relay.attempt"] == n
        assert span.attributes["suki_relay.action"] == "ehr"
        assert span.attributes["suki_relay.action_type"] == "http"
        assert span.attributes["suki_relay.outcome"] == ("ok" if n == 3 else "retry")
        assert span.attributes["http.response.status_code"] == (200 if n == 3 else 503)
    assert attempts[0].links == ()
    for before, after in itertools.pairwise(attempts):
        [link] = after.links
        assert (link.context.trace_id, link.context.span_id) == (trace_id, before.context.span_id)

    # what the target got joins the trace: traceparent names the attempt's span
    for got, span in zip(target.received, attempts, strict=True):
        assert got.headers["traceparent"] == \
            f"00-{_hex(trace_id, 32)}-{_hex(span.context.span_id, 16)}-01"

    # no PHI, and no id from the payload, anywhere in a span
    shown = json.dumps([{"name": s.name, "attributes": dict(s.attributes or {}),
                         "links": [dict(link.attributes or {}) for link in s.links],
                         "events": [e.name for e in s.events]} for s in finished])
    for needle in (PHI, session_id, "failure", "enc"):
        assert needle not in shown, needle


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_refusals_and_duplicates_have_traces_of_their_own(write_config: Any, local_relay: Any,
                                                          spans: InMemorySpanExporter) -> None:
    relay = local_relay(write_config({"tracing": {"enabled": True}}), deliver=False)
    body = unique_body()
    first = relay.accept(body)
    again = relay.post(body, protocol.signed_headers("wrong-secret", body))
    assert again.status_code == 401
    headers = protocol.signed_headers(relay.config.receiver.secrets[0], body)
    assert relay.post(body, headers).json["status"] == "accepted"  # another signing time
    receipts = [s for s in spans.get_finished_spans() if s.name == "suki_relay.receive"]
    assert [s.attributes["suki_relay.outcome"] for s in receipts] == [
        "accepted", "bad_signature", "accepted"]
    assert "suki_relay.event_id" not in receipts[1].attributes
    assert len({s.context.trace_id for s in receipts}) == 3
    assert receipts[0].attributes["suki_relay.event_id"] == first


def test_off_by_default_unless_the_standard_variables_say(write_config: Any, local_relay: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*tracing.ENV_ENDPOINTS, "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    relay = local_relay(write_config(), deliver=False)
    assert relay.config.tracing.wanted is False and tracing.ON is False
    relay.accept(unique_body())
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert relay.config.tracing.wanted  # the standard variables alone turn it on
