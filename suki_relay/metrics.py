"""Prometheus metrics. No payload value is ever a label (status is reduced to a safe token).

Under gunicorn with several workers, set PROMETHEUS_MULTIPROC_DIR (``suki-relay serve``
does) and every worker's counts are summed at scrape time. Queue depth and the age of
the oldest pending delivery are read from the store when scraped, at most every 2 s.

With ``metrics: {enabled: false}`` (:func:`configure`, called where a process applies its
config) nothing is counted and prometheus-client is never imported; otherwise it is
imported at the first count, after the process has set PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from suki_relay.protocol import DOCUMENTED_STATUSES

if TYPE_CHECKING:
    from prometheus_client.core import GaugeMetricFamily

    from suki_relay.config.routing import Rule
    from suki_relay.serve.config_state import ConfigState
    from suki_relay.store import Administering, Stats
    from suki_relay.store.spool import Spool

_TOKEN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_enabled: bool | None = None  # None: not configured (counted, as by default)


def configure(enabled: bool) -> None:
    """Whether this process counts: call with the config's ``metrics.enabled`` before the
    first count. Off, every metric is a no-op and prometheus-client is not imported."""
    global _enabled
    _enabled = enabled
    if enabled:
        _made()


class _Off:
    """A metric that counts nothing (metrics are off)."""

    def labels(self, *values: str) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


_OFF = _Off()


class _Metric:
    """A prometheus-client Counter or Histogram, made at its first use (or nothing, when
    metrics are off), so that importing this module imports no metrics library."""

    __slots__ = ("_args", "_kind", "_kwargs", "_real")

    def __init__(self, kind: str, *args: Any, **kwargs: Any):
        self._kind, self._args, self._kwargs = kind, args, kwargs
        self._real: Any = None

    def _get(self) -> Any:
        real = self._real
        if real is None:
            if _enabled is False:
                return _OFF
            import prometheus_client

            real = self._real = getattr(prometheus_client, self._kind)(*self._args,
                                                                       **self._kwargs)
        return real

    def labels(self, *values: str) -> Any:
        return self._get().labels(*values)

    def inc(self, amount: float = 1) -> None:
        self._get().inc(amount)

    def observe(self, value: float) -> None:
        self._get().observe(value)


_ALL: list[_Metric] = []


def _declare(kind: str, *args: Any, **kwargs: Any) -> Any:
    metric = _Metric(kind, *args, **kwargs)
    _ALL.append(metric)
    return metric


def _made() -> None:
    """Every metric made (each shows from the first scrape, at zero if nothing counted)."""
    for metric in _ALL:
        metric._get()


REQUESTS = _declare("Counter", "suki_relay_requests_total", "Webhook requests by outcome",
                    ["outcome"])
EVENTS = _declare("Counter", "suki_relay_events_total", "Accepted events by status", ["status"])
DELIVERIES = _declare("Counter", "suki_relay_delivery_attempts_total",
                      "Delivery attempts by outcome", ["action", "outcome"])
RETRIES = _declare("Counter", "suki_relay_delivery_retries_total",
                   "Attempts that will be retried", ["action"])
ACK_SECONDS = _declare("Histogram", "suki_relay_ack_seconds",
                       "Time from request to acknowledgement",
                       buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
DELIVERY_SECONDS = _declare("Histogram", "suki_relay_delivery_seconds",
                            "Duration of one delivery attempt", ["action"],
                            buckets=(.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
RECOVERED = _declare("Counter", "suki_relay_recovered_sessions_total",
                     "Sessions recorded from Suki's status API, by what it said", ["status"])
GIVE_UPS = _declare("Counter", "suki_relay_recovery_give_ups_total",
                    "Missing sessions still not recoverable after give_up_after_hours")
LAG_SECONDS = _declare("Histogram", "suki_relay_delivery_lag_seconds",
                       "From acceptance to successful delivery", ["action"],
                       buckets=(.01, .05, .1, .25, .5, 1, 5, 30, 60, 300, 3600, 86400))
SPOOLED = _declare("Counter", "suki_relay_spooled_total",
                   "Events committed to the local spool because the store could not commit")
SPOOL_DRAINED = _declare("Counter", "suki_relay_spool_drained_total",
                         "Spooled events moved into the store")
SPOOL_SET_ASIDE = _declare("Counter", "suki_relay_spool_set_aside_total",
                           "Spooled records set aside because they could not be read back")


def count_request(outcome: str, seconds: float) -> None:
    child = _REQUESTS_BY_OUTCOME.get(outcome)
    if child is None:
        child = _REQUESTS_BY_OUTCOME[outcome] = REQUESTS.labels(outcome)
    child.inc()
    ACK_SECONDS.observe(seconds)


_REQUESTS_BY_OUTCOME: dict[str, Any] = {}


ALWAYS_LABELLED = DOCUMENTED_STATUSES


def event_counter(rules: Iterable[Rule]) -> Callable[[str], None]:
    """Counts accepted events by status. Label values are bounded: the statuses the
    config's rules name (``status: x`` or a list; plus success and failure); any other
    status is ``other``, so a signed payload cannot make up new time series."""
    known = {s for rule in rules for s in rule.statuses or ()}
    children = {s: EVENTS.labels(s) for s in {*ALWAYS_LABELLED, *known} if _TOKEN.fullmatch(s)}
    other = EVENTS.labels("other")

    def count(status: str) -> None:
        children.get(status, other).inc()

    return count


class StoreStats:
    """The store's counts (queue depth, oldest pending age, recovery's sessions), read at
    most every ``seconds``: a scrape, or several scrapers, must not count whole tables
    each time."""

    def __init__(self, store: Administering, seconds: float = 2.0):
        self.store = store
        self.seconds = seconds
        self._at: float | None = None
        self._stats: Stats | None = None
        self._sessions: dict[str, int] | None = None
        self.paused: dict[str, bool] = {}  # action -> paused, as last read

    def __call__(self) -> tuple[Stats | None, dict[str, int] | None]:
        now = time.monotonic()
        if self._at is None or now - self._at >= self.seconds:
            self._stats = self._sessions = None
            try:
                self._stats = self.store.stats()
                self._sessions = self.store.recovery_counts()
                self.paused = {s.action: s.state == "paused" for s in self.store.action_states()}
            except Exception:
                pass
            self._at = now
        return self._stats, self._sessions


class StoreCollector:
    """Queue depth, oldest pending age and recovery's sessions, as last read by StoreStats."""

    def __init__(self, stats: StoreStats):
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from prometheus_client.core import GaugeMetricFamily

        stats, sessions = self.stats()
        if stats is None:
            return
        depth = GaugeMetricFamily("suki_relay_deliveries", "Deliveries by state",
                                  labels=["state"])
        for state, n in stats.deliveries.items():
            depth.add_metric([state], n)
        yield depth
        yield GaugeMetricFamily("suki_relay_oldest_pending_age_seconds",
                                "Age of the oldest unfinished delivery",
                                value=stats.oldest_pending_age_seconds)
        paused = GaugeMetricFamily("suki_relay_action_paused", "1 while the action is paused "
                                   "(its deliveries wait; one probe at a time)", labels=["action"])
        for action, is_paused in sorted(self.stats.paused.items()):
            paused.add_metric([action], int(is_paused))
        yield paused
        if sessions is None:
            return
        yield GaugeMetricFamily("suki_relay_sessions_missing",
                                "Sessions listed by a success event, with no event of their "
                                "own yet, still being checked", value=sessions.get("waiting", 0))
        yield GaugeMetricFamily("suki_relay_sessions_given_up",
                                "Missing sessions that recovery gave up on (kept a week)",
                                value=sessions.get("given_up", 0))


class ConfigCollector:
    """Which config runs, and whether the last edit of actions.yaml was rejected."""

    def __init__(self, state: ConfigState):
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from prometheus_client.core import GaugeMetricFamily

        info = GaugeMetricFamily("suki_relay_config_info", "The config running (version)",
                                 labels=["version"])
        info.add_metric([self.state.version], 1)
        yield info
        yield GaugeMetricFamily("suki_relay_config_reload_rejected",
                                "1 while the last edit of actions.yaml failed to load and "
                                "the previous config keeps running",
                                value=int(self.state.rejected is not None))


class SpoolCollector:
    """Events waiting in this node's spool and the age of the oldest, read when scraped
    (from the file: the same for every process of the node)."""

    def __init__(self, spool: Spool):
        self.spool = spool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from prometheus_client.core import GaugeMetricFamily

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
        yield GaugeMetricFamily("suki_relay_spool_set_aside",
                                "Spooled records set aside, unreadable: kept in the spool "
                                "file for an operator (suki-relay spool)",
                                value=summary["set_aside"])


def render(stats: StoreStats, config: ConfigState | None = None,
           spool: Spool | None = None) -> tuple[bytes, str]:
    """This process's counts (or every worker's, in multiprocess mode), then the store's
    (and the config's, and the spool's)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    _made()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counts = CollectorRegistry()
        MultiProcessCollector(counts)
    else:
        counts = REGISTRY
    queue = CollectorRegistry()
    queue.register(StoreCollector(stats))  # type: ignore[arg-type]
    if config is not None:
        queue.register(ConfigCollector(config))  # type: ignore[arg-type]
    if spool is not None:
        queue.register(SpoolCollector(spool))  # type: ignore[arg-type]
    return generate_latest(counts) + generate_latest(queue), CONTENT_TYPE_LATEST
