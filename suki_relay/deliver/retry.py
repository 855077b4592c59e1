"""When to try a failed delivery again: exponential backoff with jitter, per action.

The policy is the ``retry:`` mapping of an action in actions.yaml; its defaults retry for
about a day (5 s, 10 s, 20 s ... capped at 3 h, at most 20 tries or 24 h).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from suki_relay.options import setting


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = setting(20, positive=True, help="tries in all, the first included")
    initial_seconds: float = setting(5.0, positive=True, help="the first wait")
    max_seconds: float = setting(3 * 3600.0, positive=True, help="the longest wait")
    max_age_seconds: float = setting(24 * 3600.0, positive=True,
                                     help="give up this long after the first try")

    def delay(self, tries: int, retry_after: float | None = None) -> float:
        """Seconds before the next try, after ``tries`` failed ones (1-based)."""
        base = min(self.max_seconds, self.initial_seconds * 2 ** (tries - 1))
        delay = base * random.uniform(0.75, 1.25)
        if retry_after is not None:  # the target knows best, within the retry window
            delay = max(delay, min(retry_after, self.max_age_seconds))
        return delay
