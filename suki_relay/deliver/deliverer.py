"""Delivering: claim due deliveries from the store, run their actions, record each attempt.

One claimer thread per process hands deliveries to a fixed set of delivery threads. The
claim sets a lease; while an attempt runs, the claimer renews it. If the process dies
(``kill -9``), the lease runs out and any process claims the delivery again, so nothing
accepted is lost (at-least-once; the ``http`` action's Idempotency-Key lets targets tell).
A database outage is not a death: leases do not run out while no claimer can reach the
store (store/ledger.py, the lease clock). On a graceful stop, in-flight attempts get
``shutdown_seconds`` to finish; the leases of the rest are given back, and a delivery whose
attempt was still under way is taken over by its next claim (it may yet have acted).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import socket
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from suki_relay import logs, metrics, tracing
from suki_relay.deliver import fetch
from suki_relay.deliver.action import Delivery
from suki_relay.deliver.templates import is_template_error
from suki_relay.errors import InDoubtError, PermanentError, RetryableError, StoreUnavailable
from suki_relay.store import (
    DONE,
    FAILED,
    PENDING,
    UNKNOWN,
    Claimed,
    ClaimRequest,
    Delivering,
    Outcome,
    retention,
)
from suki_relay.store.group_commit import GroupCommit
from suki_relay.store.health import PAUSED, Change, PausePolicy

if TYPE_CHECKING:
    from suki_relay.config.load import ActionSpec, Config

log = logging.getLogger("suki_relay.deliver.deliverer")
PRUNE_EVERY = 3600.0  # seconds between retention prunes, when retention.days is set
FINISH_PATIENCE = 600.0  # seconds to keep trying to record an attempt while the store is down


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def attempt(config: Config, claimed: Claimed, now: float | None = None) -> Outcome:
    """Run one attempt of one delivery and decide what happens next. No store I/O."""
    started = time.time() if now is None else now
    t0 = time.perf_counter()
    spec = config.actions.get(claimed.action)
    note: str | None = None
    delivery: Delivery | None = None
    try:
        if spec is None:
            raise PermanentError(f"action {claimed.action!r} is no longer in the config")
        delivery = Delivery(
            id=claimed.id, event_id=claimed.event_id, action=claimed.action,
            attempt=claimed.attempt, event=json.loads(claimed.body), raw_body=claimed.body,
            received_at=iso(claimed.received_at), recovered=claimed.recovered,
            taken_over=claimed.taken_over,
            failed=json.loads(claimed.cause) if claimed.cause else None,
        )
        note = perform(spec, delivery)
    except RetryableError as exc:
        return _retry_or_give_up(spec, claimed, started, time.perf_counter() - t0, str(exc),
                                 exc.status, exc.retry_after)
    except InDoubtError as exc:
        return Outcome("unknown", started, time.perf_counter() - t0, UNKNOWN, None, exc.status,
                       str(exc))
    except PermanentError as exc:
        return Outcome("failed", started, time.perf_counter() - t0, FAILED, None, exc.status,
                       str(exc))
    except Exception as exc:  # a bug in an action: retry, it may be transient
        if is_template_error(exc):
            return Outcome("failed", started, time.perf_counter() - t0, FAILED, None, None,
                           f"template error: {exc}")
        return _retry_or_give_up(spec, claimed, started, time.perf_counter() - t0,
                                 f"unexpected {type(exc).__name__} in action")
    return Outcome("ok", started, time.perf_counter() - t0, DONE, None,
                   delivery.http_status if delivery is not None else None, None,
                   note[:500] if isinstance(note, str) else None)


def perform(spec: ActionSpec, delivery: Delivery) -> str | None:
    """One attempt of one action: fetch what it links to (its ``fetch:``), then deliver.
    The fetched documents live in ``delivery`` for this attempt only."""
    if spec.fetch:
        delivery.fetched = fetch.fetch(spec.action.relay.suki_client(), delivery.event,
                                       spec.fetch)
    return spec.action.deliver(delivery)


def _retry_or_give_up(spec: ActionSpec | None, claimed: Claimed, started: float,
                      duration: float, message: str, http_status: int | None = None,
                      retry_after: float | None = None) -> Outcome:
    """Retry later with backoff, or fail for good once the action's retry budget is spent."""
    if claimed.probe:  # the action is paused: the delivery waits, its budget untouched
        return Outcome("retry", started, duration, PENDING, time.time(), http_status,
                       f"probe of a paused action: {message}")
    policy = spec.retry if spec else None
    if policy is None or claimed.tries >= policy.max_attempts or (
            started - claimed.cycle_started_at >= policy.max_age_seconds):
        return Outcome("failed", started, duration, FAILED, None, http_status,
                       f"gave up after {claimed.tries} tries: {message}")
    delay = policy.delay(claimed.tries, retry_after)
    return Outcome("retry", started, duration, PENDING, time.time() + delay, http_status,
                   message)


class Deliverer:
    def __init__(self, config: Config, store: Delivering, owner: str | None = None):
        self.config = config
        self.store = store
        self._given_owner = owner
        # named again when started, after the fork that made the process which runs it
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.settings = config.delivery
        self.concurrency = {name: spec.max_concurrency for name, spec in config.actions.items()}
        reporters = tuple(config.on_failure if config.on_pause is None else config.on_pause)
        self.pauses = {name: PausePolicy(spec.pause_after, spec.probe_every_seconds, reporters)
                       for name, spec in config.actions.items()}
        self._finisher = GroupCommit(self._finish_batch, store.exclusive)
        self._reset()

    def _reset(self) -> None:
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._queue: queue.Queue[Claimed | None] = queue.Queue()
        self._inflight: dict[str, Claimed] = {}
        self._under_way: set[str] = set()  # claimed, and its attempt begun
        self._full: frozenset[str] = frozenset()  # actions at their limit at the last look
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- lifecycle
    # started and stopped by the process's lifecycle (serve/process.py), never by itself

    def start(self) -> None:
        self.owner = self._given_owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._threads = [threading.Thread(target=self._claim_loop, name="suki-claim", daemon=True)]
        self._threads += [threading.Thread(target=self._work_loop, name=f"suki-deliver-{i}",
                                           daemon=True) for i in range(self.settings.threads)]
        for t in self._threads:
            t.start()

    def wake(self, actions: list[str]) -> None:
        """Deliveries for ``actions`` were recorded. Wake the claimer only if it could take
        one: a delivery thread is free (a thread that frees up wakes the claimer itself),
        not every one of these actions was at its max_concurrency at the last look (the
        claimer looks again when a delivery finishes, and every poll), and nobody woke it
        yet. A request thread that wakes another thread for nothing pays a context switch."""
        if (len(self._inflight) < self.settings.threads and not self._wake.is_set()
                and not self._full.issuperset(actions)):
            self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; let in-flight attempts finish within the timeout; release the rest."""
        if not self._threads or self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + (self.settings.shutdown_seconds if timeout is None
                                       else timeout)
        for _ in range(self.settings.threads):
            self._queue.put(None)
        while time.monotonic() < deadline:
            with self._lock:
                if not self._inflight:
                    break
            time.sleep(0.05)
        with self._lock:
            left = list(self._inflight)
            under_way = [i for i in left if i in self._under_way]
        self._close_actions()
        if left:
            try:
                # an attempt still under way may yet reach its target: the next claim of
                # its delivery is a takeover, as if this process had died
                released = self.store.release(self.owner, left, under_way)
                logs.event(log, "released unfinished deliveries", logging.WARNING,
                           count=released, under_way=len(under_way))
            except Exception as exc:
                logs.event(log, "could not release deliveries; their leases will expire",
                           logging.WARNING, error_class=type(exc).__name__)

    def _close_actions(self) -> None:
        """Each action's pools (an attempt still running keeps its connection until it
        ends; the pool is gone after it)."""
        for name, spec in self.config.actions.items():
            try:
                spec.action.close()
            except Exception as exc:
                logs.event(log, "action could not be closed", logging.WARNING, action=name,
                           error_class=type(exc).__name__)

    def join(self, timeout: float = 10.0) -> bool:
        """After stop(): wait for this deliverer's threads to end (a thread still inside
        a stalled attempt may outlive the timeout). True if every thread ended."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    # ---------------------------------------------------------------- claiming

    def _claim_loop(self) -> None:
        idle_wait = 0.05
        renew_every = self.settings.lease_seconds / 4
        last_renew = time.monotonic() - renew_every  # at once: the first contact is noted
        next_prune = time.monotonic()  # at start, then hourly
        while not self._stopping.is_set():
            self._wake.clear()  # before looking: a wake-up from now on is never lost
            # renew before claiming: after a database outage this process's own attempts,
            # still waiting to be recorded, get their leases back before it looks for
            # expired ones (which would take them again). Every lease_seconds / 4 even
            # with none: it notes that this process reaches the store, so that a silence
            # of every claimer means an outage (store/ledger.py, the lease clock)
            if time.monotonic() - last_renew > renew_every and self._renew():
                last_renew = time.monotonic()
            with self._lock:
                free = self.settings.threads - len(self._inflight)
            claimed: list[Claimed] = []
            if free > 0:
                try:
                    claimed, full = self.store.claim(self.owner, free,
                                                     self.settings.lease_seconds, self.concurrency)
                except StoreUnavailable as exc:
                    logs.event(log, "store unavailable; delivery paused", logging.WARNING,
                               error=str(exc)[:200])
                    self._stopping.wait(min(5.0, self.settings.poll_seconds * 2))
                    continue
                except Exception as exc:
                    logs.event(log, "claim failed", logging.ERROR, error_class=type(exc).__name__)
                    self._stopping.wait(self.settings.poll_seconds)
                    continue
                with self._lock:
                    for c in claimed:
                        self._inflight[c.id] = c
                for c in claimed:
                    self._queue.put(c)
                self._full = frozenset() if claimed else full
            if self.config.retention_days and time.monotonic() >= next_prune:
                self._prune()
                next_prune = time.monotonic() + PRUNE_EVERY
            # busy: look again soon (or when a thread is free); idle: back off to poll_seconds
            idle_wait = 0.05 if claimed else min(self.settings.poll_seconds, idle_wait * 2)
            self._wake.wait(min(idle_wait, max(0.05, last_renew + renew_every - time.monotonic())))

    def _prune(self) -> None:
        """Retention: drop finished events older than retention.days (never unfinished)."""
        assert self.config.retention_days
        try:
            n, _ = retention.prune(self.store, self.config, time.time() - self.config.retention_days * 86400)
        except Exception as exc:
            logs.event(log, "retention prune failed", logging.WARNING,
                       error_class=type(exc).__name__)
            return
        if n:
            logs.event(log, "retention pruned finished events", count=n,
                       days=self.config.retention_days)

    def _renew(self) -> bool:
        """Extend the leases of this process's attempts; False if the store could not."""
        with self._lock:
            ids = list(self._inflight)
        try:
            self.store.extend(self.owner, ids, self.settings.lease_seconds)
        except StoreUnavailable:  # said by the claim that follows
            return False
        except Exception as exc:
            logs.event(log, "lease renewal failed", logging.WARNING,
                       error_class=type(exc).__name__)
            return False
        return True

    # ---------------------------------------------------------------- attempting

    def _work_loop(self) -> None:
        """Take a claimed delivery; after each attempt, the same transaction that records
        it claims this thread's next one, so a busy thread never waits for the claimer."""
        while True:
            claimed: Claimed | None = self._queue.get()
            if claimed is None:
                return
            while claimed is not None:
                following: Claimed | None = None
                with self._lock:
                    self._under_way.add(claimed.id)
                try:
                    following = self._run(claimed)
                finally:
                    with self._lock:
                        self._inflight.pop(claimed.id, None)
                        self._under_way.discard(claimed.id)
                        if following is not None:
                            self._inflight[following.id] = following
                claimed = following
            self._wake.set()

    def _run(self, claimed: Claimed) -> Claimed | None:
        result = self._traced(claimed) if tracing.ON else attempt(self.config, claimed)
        metrics.DELIVERIES.labels(claimed.action, result.outcome).inc()
        metrics.DELIVERY_SECONDS.labels(claimed.action).observe(result.duration)
        if result.outcome == "retry":
            metrics.RETRIES.labels(claimed.action).inc()
        if result.outcome == "ok":
            metrics.LAG_SECONDS.labels(claimed.action).observe(time.time() - claimed.received_at)
        logs.event(log, "delivery attempt", logging.INFO if result.outcome == "ok"
                   else logging.WARNING, event_id=claimed.event_id, delivery_id=claimed.id,
                   action=claimed.action, attempt=claimed.attempt, outcome=result.outcome,
                   http_status=result.http_status, duration_ms=round(result.duration * 1000, 1),
                   error_class=_error_class(result))
        if result.state in (FAILED, UNKNOWN) and self.config.on_failure and claimed.cause is None:
            # failed for good, or in doubt (an operator must look): plan the on_failure
            # actions in the transaction recording it (an on_failure delivery that fails
            # does not plan them again)
            result = dataclasses.replace(result, on_failure=tuple(self.config.on_failure))
            logs.event(log, "delivery failed for good; on_failure planned" if result.state == FAILED
                       else "delivery outcome unknown; on_failure planned", logging.ERROR,
                       event_id=claimed.event_id, delivery_id=claimed.id,
                       action=claimed.action, on_failure=len(self.config.on_failure))
        return self._finish(claimed, result)

    def _traced(self, claimed: Claimed) -> Outcome:
        """An attempt within its span (tracing.py): action, attempt, outcome, status."""
        spec = self.config.actions.get(claimed.action)
        with tracing.attempt(claimed.event_id, claimed.id, claimed.attempt, claimed.action,
                             spec.type if spec else None) as span:
            result = attempt(self.config, claimed)
            span.set_attribute("suki_relay.outcome", result.outcome)
            if claimed.probe:
                span.set_attribute("suki_relay.probe", True)
            if result.http_status is not None:
                span.set_attribute("http.response.status_code", result.http_status)
            if result.outcome != "ok":
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR, _error_class(result) or "failed"))
        return result

    def _finish(self, claimed: Claimed, result: Outcome) -> Claimed | None:
        """Record the attempt (and get this thread's next delivery). If the store is down,
        keep trying until it is back (the claimer renews the lease first thing then), so an
        attempt made before a database outage is not made again after it; give up only
        when stopping, or after FINISH_PATIENCE (the lease has run out by then, and any
        process takes the delivery again: at-least-once)."""
        deadline = time.monotonic() + max(self.settings.lease_seconds, FINISH_PATIENCE)
        while True:
            try:
                return self._finisher.submit((claimed, result))
            except StoreUnavailable:
                if time.monotonic() > deadline or self._stopping.is_set():
                    logs.event(log, "attempt not recorded; it will be retried", logging.ERROR,
                               delivery_id=claimed.id)
                    return None
                time.sleep(0.5)

    def _finish_batch(self, items: list[tuple[Claimed, Outcome]]) -> list[Claimed | None]:
        """One transaction for every thread that just finished: record, then claim as many."""
        wanted = 0 if self._stopping.is_set() else len(items)
        changes: list[Change] = []
        following: list[Claimed | None] = list(self.store.finish(
            [(c, self.owner, r) for c, r in items],
            ClaimRequest(self.owner, wanted, self.settings.lease_seconds, self.concurrency),
            self.pauses, changes))
        for change in changes:  # each reported once: by the transaction that made it
            self._report(change)
        return following + [None] * (len(items) - len(following))


    def _report(self, change: Change) -> None:
        """An action paused or resumed: at WARNING (its on_pause actions are planned)."""
        if change.state == PAUSED:
            every = self.pauses.get(change.action, PausePolicy()).probe_every_seconds
            logs.event(log, f"action paused after {change.failures} failed attempts in a row; "
                       f"its deliveries wait, one probe every {every:g}s", logging.WARNING,
                       action=change.action, delivery_id=change.delivery_id)
        else:
            logs.event(log, "action resumed: a probe delivery succeeded", logging.WARNING,
                       action=change.action, delivery_id=change.delivery_id)


def _error_class(result: Outcome) -> str | None:
    if result.outcome == "ok":
        return None
    if result.error and result.error.startswith("template error"):
        return "template"
    return f"http_{result.http_status}" if result.http_status else result.outcome
