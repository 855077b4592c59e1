"""Pruning old events, never inside the replay window.

An event's dedup key is what makes a captured request, sent again, a duplicate instead of
a second run of every action. A request signed at G is accepted while |now - G| is within
tolerance_seconds, so one received at R can come again until G + tolerance <= R + 2 x
tolerance. Whatever age a prune is asked for (`prune --older-than 1s`, a tiny
retention.days), events received within twice the tolerance plus a margin for clocks
that disagree between nodes are kept.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from suki_relay.store import Delivering

if TYPE_CHECKING:
    from suki_relay.config.load import Config

CLOCK_MARGIN_SECONDS = 60.0


def replay_floor(config: Config, now: float | None = None) -> float:
    """The latest received time a prune may delete before."""
    tolerance = config.receiver.tolerance_seconds
    now = time.time() if now is None else now
    if not math.isfinite(tolerance):
        return -math.inf
    return now - 2 * abs(tolerance) - CLOCK_MARGIN_SECONDS


def prune(store: Delivering, config: Config, before: float) -> tuple[int, float]:
    """Delete finished events received before ``before``, or before the replay floor if
    that is earlier. Returns how many were deleted and the time actually used."""
    cutoff = min(before, replay_floor(config))
    if cutoff == -math.inf:
        return 0, cutoff
    return store.prune(cutoff), cutoff
