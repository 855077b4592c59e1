"""A trace of refused requests: clock skew or a wrong secret becomes visible.

Each refusal keeps the time, the reason code, the HTTP status, how far `generated-at` was
from this node's clock (ms; positive: the request is older than now) and the remote
address. Never the body, never a header value but the skew.

Cheap and bounded, so a flood of bad requests can neither slow good ones nor grow without
limit: the request thread only updates an in-memory tally keyed by (reason, address),
at most MAX_KEYS of them (the rest are counted under `other`); one background thread per
process writes the tally every FLUSH_SECONDS in one transaction that also trims the table
to its newest rows (store/rejections.py). A kill -9 loses at most the last second of the
trace; nothing else depends on it.
"""

from __future__ import annotations

import logging
import threading
import time

from suki_relay import logs
from suki_relay.receive.verify import generated_at_ms
from suki_relay.store import Receiving
from suki_relay.store.refusals import Rejection

log = logging.getLogger("suki_relay.receive.rejections")

FLUSH_SECONDS = 1.0
MAX_KEYS = 256
OVERFLOW = "other"  # stands for refusals beyond MAX_KEYS distinct (reason, address) pairs


def skew_ms(generated_at: str | None, now: float) -> int | None:
    """This node's clock minus `generated-at`, in ms; None if the header is not a number."""
    sent = generated_at_ms(generated_at)
    return None if sent is None else int(now * 1000) - sent


def expired_hint(skew: int, now: float | None = None) -> str:
    """What an `expired` skew most likely means (generated-at is in milliseconds)."""
    now = time.time() if now is None else now
    sent = now * 1000 - skew  # the header's value
    if abs(sent - now) < 86_400:
        return "generated-at looks like seconds; Suki sends Unix time in milliseconds"
    if abs(sent / 1000 - now * 1000) < 86_400_000:
        return "generated-at looks like microseconds; Suki sends Unix time in milliseconds"
    return ("generated-at is Unix time in milliseconds; check the sender's and this node's "
            "clocks (NTP) or raise receiver.tolerance_seconds")


class RejectionLog:
    """Per process: tally refusals in memory, write them out in the background."""

    def __init__(self, store: Receiving, flush_seconds: float = FLUSH_SECONDS):
        self.store = store
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._tally: dict[tuple[str, str | None], Rejection] = {}
        self._stopping = threading.Event()

    def add(self, reason: str, http_status: int, skew: int | None,
            remote_addr: str | None, now: float | None = None) -> None:
        """Called on the request path: a dict update under a lock, no I/O."""
        now = time.time() if now is None else now
        key = (reason, remote_addr)
        with self._lock:
            row = self._tally.get(key)
            if row is None:
                if len(self._tally) >= MAX_KEYS:
                    key = (OVERFLOW, None)
                    row = self._tally.get(key)
                if row is None:
                    self._tally[key] = Rejection(now, now, key[0], http_status, skew, key[1])
                    return
            row.last_at = now
            row.count += 1
            if skew is not None:
                row.skew_ms = skew  # the latest measurement

    def start(self) -> None:
        """The writer thread, started (and stopped) by the process's lifecycle
        (serve/process.py). Until it runs, refusals are only tallied (at most MAX_KEYS)."""
        self._stopping.clear()
        threading.Thread(target=self._run, name="suki-rejections", daemon=True).start()

    def _run(self) -> None:
        while not self._stopping.wait(self.flush_seconds):
            self.flush()

    def stop(self) -> None:
        """Write what is tallied, and end the writer thread."""
        self._stopping.set()
        self.flush()

    def flush(self) -> int:
        with self._lock:
            rows = list(self._tally.values())
            self._tally = {}
        if not rows:
            return 0
        try:
            self.store.add_rejections(rows)
        except Exception as exc:  # the store is down: keep the tally for the next try
            logs.event(log, "could not record refused requests yet", logging.WARNING,
                       count=sum(r.count for r in rows), error_class=type(exc).__name__)
            with self._lock:
                for row in rows:
                    key = (row.reason, row.remote_addr)
                    if key in self._tally:
                        kept = self._tally[key]
                        kept.first_at, kept.count = row.first_at, kept.count + row.count
                    elif len(self._tally) < MAX_KEYS:
                        self._tally[key] = row
            return 0
        return len(rows)
