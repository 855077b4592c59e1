"""Whether this process can take a notification now, and why not: for /readyz, and logged
once per change.

A process boots whatever its store and spool say (a database down, a spool file that is
not an SQLite file); while neither can commit, requests are answered 503 and /readyz says
which part failed and how. What each one last said comes from the requests themselves
(a commit that failed, or succeeded again) and from readiness probes; a change of state is
logged once: at ERROR when notifications cannot be committed (or the spool is gone while
the store is up, so the next outage would be answered 503), at WARNING while the spool
takes them, at WARNING again when everything is back.
"""

from __future__ import annotations

import logging
import threading

from suki_relay import logs

log = logging.getLogger("suki_relay.receive.availability")

READY = "ready"
DEGRADED = "degraded"  # the store cannot commit; the spool takes notifications
NO_SPOOL = "spool_unavailable"  # the store commits; the spool could not take an outage
UNAVAILABLE = "unavailable"  # neither can commit: requests get 503


class Availability:
    def __init__(self, spool: bool) -> None:
        self.spool = spool  # this process has a spool
        self.store_problem: str | None = None
        self.spool_problem: str | None = None
        self.state = READY
        self._lock = threading.Lock()

    def why(self) -> dict[str, str]:
        """The last problem of each part, for /readyz's body."""
        found = {}
        if self.store_problem is not None:
            found["store"] = self.store_problem
        if self.spool_problem is not None:
            found["spool"] = self.spool_problem
        elif not self.spool and self.store_problem is not None:
            found["spool"] = "disabled"
        return found

    def note(self, *, store: str | bool | None = False,
             spool: str | bool | None = False) -> None:
        """What the store and the spool said (a problem, or None when they committed; False:
        not asked). Logs when the state changes."""
        with self._lock:
            if store is not False:
                self.store_problem = store  # type: ignore[assignment]
            if spool is not False:
                self.spool_problem = spool  # type: ignore[assignment]
            state = self._state()
            if state == self.state:
                return
            before, self.state = self.state, state
            why = self.why()
        if state == UNAVAILABLE:
            logs.event(log, "notifications cannot be committed; answering 503", logging.ERROR,
                       **why)
        elif state == NO_SPOOL:
            logs.event(log, "spool unavailable; a database outage would be answered 503",
                       logging.ERROR, **why)
        elif state == DEGRADED:
            logs.event(log, "store unavailable; the spool takes notifications",
                       logging.WARNING, **why)
        else:
            logs.event(log, "notifications can be committed again", logging.WARNING, was=before)

    def _state(self) -> str:
        spool_ok = self.spool and self.spool_problem is None
        if self.store_problem is None:
            return READY if spool_ok or not self.spool else NO_SPOOL
        return DEGRADED if spool_ok else UNAVAILABLE
