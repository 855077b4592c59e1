"""Prometheus metrics. No payload value is ever a label (status is reduced to a safe token).

Under gunicorn with several workers, set PROMETHEUS_MULTIPROC_DIR (``suki-relay serve``
does) and every worker's counts are summed at scrape time. Queue depth and the age of
the oldest pending delivery are read from the store at scrape time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from .spool import Spool
    from .store import Store

_TOKEN = re.compile(r"[a-z][a-z0-9_-]{0,31}")

REQUESTS = Counter("suki_relay_requests_total", "Webhook requests by outcome", ["outcome"])
EVENTS = Counter("suki_relay_events_total", "Accepted events by status", ["status"])
DELIVERIES = Counter("suki_relay_delivery_attempts_total", "Delivery attempts by outcome",
                     ["action", "outcome"])
RETRIES = Counter("suki_relay_delivery_retries_total", "Attempts that will be retried",
                  ["action"])
ACK_SECONDS = Histogram("suki_relay_ack_seconds", "Time from request to acknowledgement",
                        buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
DELIVERY_SECONDS = Histogram("suki_relay_delivery_seconds", "Duration of one delivery attempt",
                             ["action"], buckets=(.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
RECOVERED = Counter("suki_relay_recovered_sessions_total",
                    "Sessions recorded from Suki's status API, by what it said", ["status"])
GIVE_UPS = Counter("suki_relay_recovery_give_ups_total",
                   "Missing sessions still not recoverable after give_up_after_hours")
LAG_SECONDS = Histogram("suki_relay_delivery_lag_seconds",
                        "From acceptance to successful delivery", ["action"],
                        buckets=(.01, .05, .1, .25, .5, 1, 5, 30, 60, 300, 3600, 86400))
SPOOLED = Counter("suki_relay_spooled_total",
                  "Events committed to the local spool because the store could not commit")
SPOOL_DRAINED = Counter("suki_relay_spool_drained_total",
                        "Spooled events moved into the store")


def count_request(outcome: str, seconds: float) -> None:
    child = _REQUESTS_BY_OUTCOME.get(outcome)
    if child is None:
        child = _REQUESTS_BY_OUTCOME[outcome] = REQUESTS.labels(outcome)
    child.inc()
    ACK_SECONDS.observe(seconds)


_REQUESTS_BY_OUTCOME: dict[str, Counter] = {}


def status_label(status: str | None) -> str:
    if status is None:
        return "malformed"
    return status if _TOKEN.fullmatch(status) else "other"


class StoreCollector:
    """Queue depth and oldest pending age, read when scraped."""

    def __init__(self, store: Store):
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            stats = self.store.stats()
        except Exception:
            return
        depth = GaugeMetricFamily("suki_relay_deliveries", "Deliveries by state",
                                  labels=["state"])
        for state, n in stats.deliveries.items():
            depth.add_metric([state], n)
        yield depth
        yield GaugeMetricFamily("suki_relay_oldest_pending_age_seconds",
                                "Age of the oldest unfinished delivery",
                                value=stats.oldest_pending_age_seconds)
        try:
            sessions = self.store.recovery_counts()
        except Exception:
            return
        yield GaugeMetricFamily("suki_relay_sessions_missing",
                                "Sessions listed by a success event, with no event of their "
                                "own yet, still being checked", value=sessions.get("waiting", 0))
        yield GaugeMetricFamily("suki_relay_sessions_given_up",
                                "Missing sessions that recovery gave up on (kept a week)",
                                value=sessions.get("given_up", 0))


class SpoolCollector:
    """Events waiting in this node's spool and the age of the oldest, read when scraped
    (from the file: the same for every process of the node)."""

    def __init__(self, spool: Spool):
        self.spool = spool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            summary = self.spool.summary()
        except Exception:
            return
        yield GaugeMetricFamily("suki_relay_spool_events",
                                "Events waiting in the local spool for the store",
                                value=summary["spooled"])
        yield GaugeMetricFamily("suki_relay_spool_oldest_age_seconds",
                                "Age of the oldest event waiting in the local spool",
                                value=summary["oldest_age_seconds"])


def render(store: Store, spool: Spool | None = None) -> tuple[bytes, str]:
    """This process's counts (or every worker's, in multiprocess mode), then the store's
    (and the spool's)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counts = CollectorRegistry()
        MultiProcessCollector(counts)
    else:
        counts = REGISTRY
    queue = CollectorRegistry()
    queue.register(StoreCollector(store))  # type: ignore[arg-type]
    if spool is not None:
        queue.register(SpoolCollector(spool))  # type: ignore[arg-type]
    return generate_latest(counts) + generate_latest(queue), CONTENT_TYPE_LATEST
