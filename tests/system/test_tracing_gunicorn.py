"""Tracing under real gunicorn workers, exported over OTLP/HTTP to a stand-in collector
(a local HTTP server that keeps what it is sent): each worker sets tracing up after the
fork, and an event's receipt and its delivery attempt arrive in one trace."""

from __future__ import annotations

from typing import Any

import pytest

from suki_relay.testing import post_signed, unique_body, wait_until

from ..conftest import http_action

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)


def _spans(collector: Any) -> list[tuple[str, str, bytes, dict[str, Any]]]:
    """(service name, span name, trace id, attributes) of every span received."""
    out = []
    for got in collector.received:
        request = ExportTraceServiceRequest.FromString(got.body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value
                       for a in resource_spans.resource.attributes}.get("service.name", "")
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    attributes = {a.key: a.value for a in span.attributes}
                    out.append((service, span.name, span.trace_id, attributes))
    return out


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("plain", [True, False], ids=["plain-gunicorn", "serve"])
def test_workers_export_one_trace_per_event(write_config, relay, sink, plain) -> None:  # type: ignore[no-untyped-def]
    collector, target = sink(), sink()
    cfg = write_config({"tracing": {"enabled": True, "endpoint": collector.url + "/v1/traces",
                                    "service_name": "relay-in-test"},
                        "actions": {"ehr": http_action(target.url)},
                        "rules": [{"name": "all", "do": ["ehr"]}]})
    r = relay(cfg, plain_gunicorn=plain, workers=2, env={"OTEL_BSP_SCHEDULE_DELAY": "100"})
    event_id = post_signed(r.webhook, unique_body()).json()["event_id"]
    wait_until(lambda: target.received, message="the delivery")
    assert "traceparent" in target.received[0].headers

    def names() -> set[str]:
        return {name for _, name, _, _ in _spans(collector)}

    wait_until(lambda: {"suki_relay.receive", "suki_relay.attempt"} <= names(), timeout=20,
               message="the receipt and the attempt exported")
    assert all(got.path == "/v1/traces" for got in collector.received)
    spans = _spans(collector)
    [receipt] = [s for s in spans if s[1] == "suki_relay.receive"]
    [attempt] = [s for s in spans if s[1] == "suki_relay.attempt"]
    assert receipt[0] == attempt[0] == "relay-in-test"
    assert receipt[2] == attempt[2]  # one trace, whichever worker delivered
    assert receipt[3]["suki_relay.event_id"].string_value == event_id
    assert attempt[3]["suki_relay.outcome"].string_value == "ok"
    assert target.received[0].headers["traceparent"].split("-")[1] == attempt[2].hex()
    assert r.stop() == 0
