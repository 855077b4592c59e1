"""OpenTelemetry tracing, for those who run it (``pip install 'suki-relay[otel]'``).

Off by default, and then it costs a module-level boolean test per request and per
attempt: nothing is imported from OpenTelemetry. On (``tracing: {enabled: true}``, or
an OTLP endpoint in the standard ``OTEL_EXPORTER_OTLP_*`` variables), each event is one
trace:

    suki_relay.receive            the request: verify, then record (children of it)
    └── suki_relay.attempt        one per delivery attempt, in whichever process, linked
                                  to the delivery's previous attempt

A delivery attempt runs long after the request, in another thread or process, so the
trace is found again from the event id alone: its trace id and the receipt span's id are
derived from the event id (the id the request is recorded under), and an attempt's span
id from its delivery id and attempt number. Nothing needs storing, and every process
agrees. Outbound HTTP made within an attempt carries ``traceparent``.

Attributes carry no PHI and no id from the payload: only the event and delivery ids, the
action's name and type, the attempt number, outcomes and HTTP statuses (never a URL: a
target's path may hold a session or encounter id, its query string a token).

Set up per process by :func:`setup` when the process's lifecycle starts it (serve/process.py:
in each gunicorn worker after the fork, where the batch span processor's thread runs), and
shut down when it stops.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from suki_relay.options import setting

ON = False  # whether this process traces: the one test on the hot paths
SERVICE = "suki-relay"
ENV_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def _url(value: str | None) -> str | None:
    if value is None or value.startswith(("http://", "https://")):
        return None
    return "expected an http:// or https:// URL of an OTLP/HTTP collector"


@dataclass(frozen=True)
class TracingSettings:
    """The ``tracing:`` section. Absent: on only if an OTLP endpoint is set in the
    environment (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``)."""

    enabled: bool | None = setting(None, kind=bool, help="send traces (needs suki-relay[otel])")
    endpoint: str | None = setting(None, kind=str, check=_url,
                                   help="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces "
                                        "(default: the OTEL_EXPORTER_OTLP_* variables)")
    service_name: str | None = setting(None, kind=str,
                                       help="default: $OTEL_SERVICE_NAME, else suki-relay")

    @property
    def wanted(self) -> bool:
        if self.enabled is not None:
            return self.enabled
        return os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true" and \
            any(os.environ.get(name) for name in ENV_ENDPOINTS)


def check(settings: TracingSettings) -> str | None:
    """What `check` says of the section: tracing wanted, the SDK not installed."""
    if not settings.wanted:
        return None
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return "tracing needs OpenTelemetry: pip install 'suki-relay[otel]'"
    return None


# ---------------------------------------------------------------- set-up, per process

_lock = threading.Lock()
_state: dict[str, Any] = {}  # provider, tracer, settings, test exporter


def setup(settings: TracingSettings, exporter: Any = None) -> bool:
    """Start tracing in this process as ``settings`` say (``exporter``: spans go there,
    at once, instead of to OTLP in batches: for tests). Returns whether it traces."""
    global ON
    exporter = exporter or _state.get("exporter")
    if not settings.wanted and exporter is None:
        shutdown()
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    with _lock:
        shutdown(locked=True)
        name = settings.service_name or os.environ.get("OTEL_SERVICE_NAME") or SERVICE
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}),
                                  id_generator=_Ids())  # type: ignore[arg-type]  # duck-typed
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
                endpoint=settings.endpoint)))
        _state.update(provider=provider, settings=settings,
                      tracer=provider.get_tracer("suki_relay"), exporter=exporter)
        ON = True
    return True


def use_exporter(exporter: Any) -> None:
    """Tests: every later setup() sends spans to ``exporter`` (an in-memory one)."""
    _state["exporter"] = exporter


def shutdown(locked: bool = False) -> None:
    """Flush and stop this process's tracing (spans still queued are sent)."""
    global ON
    ON = False
    provider = _state.pop("provider", None)
    if provider is not None:
        provider.shutdown()


def _tracer() -> Any:
    """This process's tracer."""
    return _state["tracer"]


# ---------------------------------------------------------------- ids from the event id


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def event_ids(event_id: str) -> tuple[int, int]:
    """(trace id, receipt span id) of an event's trace."""
    d = _digest("suki-relay trace " + event_id)
    return int.from_bytes(d[:16], "big") or 1, int.from_bytes(d[16:24], "big") or 1


def attempt_span_id(delivery_id: str, attempt: int) -> int:
    return int.from_bytes(_digest(f"suki-relay attempt {delivery_id} {attempt}")[:8], "big") or 1


class _Ids:
    """Random ids, except for the next span when :func:`_next_ids` says otherwise (an
    opentelemetry IdGenerator; not declared as one so that this module imports nothing
    of OpenTelemetry while tracing is off)."""

    local = threading.local()

    def is_trace_id_random(self) -> bool:
        return False  # an event's trace id is derived from its id (W3C's random flag off)

    def generate_span_id(self) -> int:
        forced = getattr(self.local, "span_id", None)
        if forced is not None:
            self.local.span_id = None
            return int(forced)
        return int.from_bytes(os.urandom(8), "big") or 1

    def generate_trace_id(self) -> int:
        forced = getattr(self.local, "trace_id", None)
        if forced is not None:
            self.local.trace_id = None
            return int(forced)
        return int.from_bytes(os.urandom(16), "big") or 1


@contextmanager
def _next_ids(trace_id: int | None, span_id: int) -> Iterator[None]:
    _Ids.local.trace_id, _Ids.local.span_id = trace_id, span_id
    try:
        yield
    finally:
        _Ids.local.trace_id = _Ids.local.span_id = None


def _context(trace_id: int, span_id: int) -> Any:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    return trace.set_span_in_context(NonRecordingSpan(SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))))


# ---------------------------------------------------------------- spans


def receipt(marks: dict[str, int], outcome: str, http_status: int,
            event_id: str | None, new: bool) -> None:
    """The spans of one request, made once it is answered from the times it marked
    (``start``, ``verified``, ``recorded``, ``end``; ns): ``suki_relay.receive``, with
    ``suki_relay.verify`` and ``suki_relay.record`` in it. A new event's receipt is the
    root of its trace; a duplicate's, or a refusal's, a trace of its own (a duplicate's
    linked to its event's)."""
    from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags

    tracer = _tracer()
    links = []
    forced: tuple[int | None, int] | None = None
    if event_id is not None:
        trace_id, span_id = event_ids(event_id)
        if new:
            forced = (trace_id, span_id)
        else:
            links = [Link(SpanContext(trace_id, span_id, is_remote=True,
                                      trace_flags=TraceFlags(TraceFlags.SAMPLED)),
                          {"suki_relay.link": "the event first received"})]
    attributes: dict[str, Any] = {"suki_relay.outcome": outcome,
                                  "http.response.status_code": http_status}
    if event_id is not None:
        attributes["suki_relay.event_id"] = event_id
    with _next_ids(*forced) if forced else _no_ids():
        span = tracer.start_span("suki_relay.receive", context=_empty(), kind=_kind("SERVER"),
                                 attributes=attributes, links=links, start_time=marks["start"])
    if http_status >= 500:
        span.set_status(Status(StatusCode.ERROR, outcome))
    inside = _in(span)
    verified = marks.get("verified")
    if verified is not None:
        tracer.start_span("suki_relay.verify", context=inside,
                          start_time=marks["start"]).end(end_time=verified)
        recorded = marks.get("recorded")
        if recorded is not None:
            tracer.start_span("suki_relay.record", context=inside,
                              start_time=verified).end(end_time=recorded)
    span.end(end_time=marks["end"])


@contextmanager
def _no_ids() -> Iterator[None]:
    yield


def _in(span: Any) -> Any:
    from opentelemetry import trace

    return trace.set_span_in_context(span, _empty())


@contextmanager
def attempt(event_id: str, delivery_id: str, number: int, action: str,
            action_type: str | None) -> Iterator[Any]:
    """The span of one delivery attempt: a child of the event's receipt span, linked to
    the delivery's previous attempt."""
    from opentelemetry.trace import Link, SpanContext, TraceFlags

    trace_id, receipt_id = event_ids(event_id)
    links = [Link(SpanContext(trace_id, attempt_span_id(delivery_id, number - 1),
                              is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)),
                  {"suki_relay.link": "previous attempt"})] if number > 1 else []
    attributes = {"suki_relay.event_id": event_id, "suki_relay.delivery_id": delivery_id,
                  "suki_relay.action": action, "suki_relay.attempt": number}
    if action_type:
        attributes["suki_relay.action_type"] = action_type
    with _next_ids(None, attempt_span_id(delivery_id, number)), \
            _tracer().start_as_current_span("suki_relay.attempt", kind=_kind("INTERNAL"),
                                            context=_context(trace_id, receipt_id),
                                            links=links, attributes=attributes) as span:
        yield span


def inject(headers: dict[str, str]) -> None:
    """Add ``traceparent`` for the current span (outbound HTTP within an attempt)."""
    from opentelemetry.trace import get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if get_current_span().get_span_context().is_valid:
        TraceContextTextMapPropagator().inject(headers)


def _kind(name: str) -> Any:
    from opentelemetry.trace import SpanKind

    return getattr(SpanKind, name)


def _empty() -> Any:
    from opentelemetry.context import Context

    return Context()  # a root: never a child of whatever span the thread had
