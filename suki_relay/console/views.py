"""The console's pages: what each one reads from the store and what each action does.

Reads are the store's admin reads; replay and reroute are the same repair operations
the CLI runs (suki_relay.recover.repair). Every action has a confirmation page (GET) and does
its work only on a POST carrying the session's CSRF token, then shows the outcome; any
other method (HEAD, which werkzeug answers on every GET route) reads only.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Request, Response

from suki_relay.config.check import SAMPLES
from suki_relay.errors import RelayError, StoreError
from suki_relay.recover import repair
from suki_relay.store import EventFilter, StoreUnavailable

if TYPE_CHECKING:
    from suki_relay.console.app import Console
    from suki_relay.console.auth import Session
    from suki_relay.receive.app import RelayApp
    from suki_relay.store import EventDetail

PAGE_SIZE = 50
STATUSES = SAMPLES  # the statuses the events filter offers: those there are samples of
CHOICES = {"": None, "yes": True, "no": False}


def _flag(value: str | None) -> bool | None:
    return CHOICES.get(value or "")


def _since(text: str) -> float:
    from suki_relay.store.rows import parse_since

    since = parse_since(text)
    assert since is not None
    return since


def readiness(relay: RelayApp) -> str:
    """What /readyz says (store, and spool where there is one), in words."""
    status, body = relay.readiness()
    if status != 200:
        return f"not ready: {body.get('message', body.get('error', 'unknown'))}"
    details = ", ".join(f"{k} {v}" for k, v in body.items()
                        if k not in ("status", "config"))  # the config: its own line
    return f"{body['status']}" + (f" ({details})" if details else "")


def spool_state(spool: Any) -> str:
    """How many notifications wait in the local spool for the store to come back."""
    try:
        summary = spool.summary()
    except Exception:
        return "unavailable"
    if not summary["spooled"]:
        return "empty"
    return (f"{summary['spooled']} waiting for the store, the oldest for "
            f"{int(summary['oldest_age_seconds'])} s")


class Views:
    def __init__(self, console: Console, relay: RelayApp):
        self.console = console
        self.relay = relay
        self.config = relay.config
        self.store = relay.store

    def render(self, request: Request, template: str, session: Session, status: int = 200,
               **context: Any) -> Response:
        return self.console.render(request, template, session, status, **context)

    def _event(self, event_id: str) -> EventDetail:
        detail = self.store.event(event_id)
        if detail is None:
            raise NotFound(f"There is no event {event_id} (it may have been pruned).")
        return detail

    # ------------------------------------------------------------ overview

    def overview(self, request: Request, session: Session) -> Response:
        now = time.time()
        try:
            stats = self.store.stats()
            counts = {"hour": self.store.count_events(now - 3600),
                      "day": self.store.count_events(now - 86400)}
        except StoreUnavailable:
            stats, counts = None, None
        facts = [
            ("Readiness", readiness(self.relay)),
            ("Store", self.config.store_url.split(":", 1)[0]),
            *([("Spool", spool_state(self.relay.spool))] if self.relay.spool is not None else []),
            ("Events stored", stats.events if stats else "-"),
            ("Config", f"{self.config.file.name}, version {self.relay.config_state.version}"),
        ]
        return self.render(request, "overview.html", session, stats=stats, counts=counts,
                           facts=facts)

    # ------------------------------------------------------------ events

    def events(self, request: Request, session: Session) -> Response:
        args = request.args
        form = {k: args.get(k, "").strip()[:200] for k in (
            "status", "session", "encounter", "since", "matched", "malformed", "recovered")}
        error = None
        rows: list[Any] = []
        older = None
        try:
            criteria: dict[str, Any] = {
                "status": form["status"] or None, "session_id": form["session"] or None,
                "encounter_id": form["encounter"] or None,
                "since": _since(form["since"]) if form["since"] else None,
                "matched": _flag(form["matched"]), "malformed": _flag(form["malformed"]),
                "recovered": _flag(form["recovered"]),  # recovered from Suki after a gap
            }
            before = args.get("before", "")
            if before:
                at, _, last_id = before.partition("~")
                criteria["before"] = (float(at), last_id)
            rows = self.store.events(EventFilter(**criteria, limit=PAGE_SIZE + 1))
        except StoreError:
            raise  # the store's trouble, not the form's (a 503 page)
        except (RelayError, ValueError) as exc:
            error = str(exc) if isinstance(exc, RelayError) else "cannot read that page marker"
        if len(rows) > PAGE_SIZE:
            rows = rows[:PAGE_SIZE]
            last = rows[-1]
            query = {k: v for k, v in form.items() if v}
            query["before"] = f"{last.received_at!r}~{last.id}"
            older = query
        return self.render(request, "events.html", session, rows=rows, form=form, error=error,
                           older=older, first_page=not args.get("before"), statuses=STATUSES,
                           status=400 if error else 200)

    def event(self, request: Request, session: Session, event_id: str,
              payload: str | None = None) -> Response:
        detail = self._event(event_id)
        return self.render(request, "event.html", session, event=detail.event,
                           deliveries=detail.deliveries, payload=payload,
                           reroutable=not detail.event.malformed)

    def payload(self, request: Request, session: Session, event_id: str) -> Response:
        body = self._event(event_id).body
        try:
            shown = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
        except ValueError:
            shown = body.decode("utf-8", "replace")
        self.console.audit(session, "show payload", event_id)
        return self.event(request, session, event_id, payload=shown)

    # ------------------------------------------------------------ reroute

    def reroute(self, request: Request, session: Session, event_id: str) -> Response:
        try:
            if request.method != "POST":  # GET or HEAD: the confirmation only
                plan = repair.plan_reroute(self.config, self.store, event_id)
                return self.render(request, "confirm_reroute.html", session, plan=plan)
            plan = repair.reroute(self.config, self.store, event_id)
        except repair.NoSuchEvent:
            raise NotFound(f"There is no event {event_id}.") from None
        except StoreError:
            raise
        except RelayError as exc:
            return self.outcome(request, session, "Reroute refused", str(exc), event_id, 409)
        self.console.audit(session, "reroute", event_id, added=len(plan.new_actions))
        if plan.new_actions:
            n = len(plan.new_actions)
            message = (f"Planned {n} new deliver{'y' if n == 1 else 'ies'}: "
                       f"{', '.join(plan.new_actions)}. The workers start on them now.")
        else:
            message = "Nothing to add: the event already has every delivery the rules ask for."
        return self.outcome(request, session, "Rerouted", message, event_id)

    # ------------------------------------------------------------ replay

    def failed(self, request: Request, session: Session) -> Response:
        rows = repair.failed_deliveries(self.store, limit=PAGE_SIZE + 1)
        return self.render(request, "failed.html", session, rows=rows[:PAGE_SIZE],
                           more=len(rows) > PAGE_SIZE, since=request.args.get("since", "24h"))

    def replay(self, request: Request, session: Session) -> Response:
        event_id = request.values.get("event", "")
        delivery_id = request.values.get("delivery", "")
        try:
            chosen = [d for d in repair.event_deliveries(self.store, event_id)
                      if d.id == delivery_id]
        except repair.NoSuchEvent:
            raise NotFound(f"There is no event {event_id}.") from None
        if not chosen:
            return self.outcome(request, session, "Replay refused",
                                "That delivery is being attempted right now, or is not one of "
                                "this event's. Nothing was changed.", event_id, 409)
        if request.method != "POST":  # GET or HEAD: the confirmation only
            return self.render(request, "confirm_replay.html", session, delivery=chosen[0],
                               event_id=event_id)
        repair.replay(self.store, chosen)
        self.console.audit(session, "replay", event_id, delivery_id=delivery_id,
                           delivery_action=chosen[0].action)
        return self.outcome(request, session, "Replayed",
                            f"Delivery {delivery_id} to {chosen[0].action} is pending "
                            "again with a fresh retry budget; the workers pick it up now.",
                            event_id)

    def replay_failed(self, request: Request, session: Session) -> Response:
        text = request.values.get("since", "").strip()[:40]
        try:
            since = float(request.form["since_ts"]) if request.method == "POST" else \
                _since(text)
            if not math.isfinite(since):
                raise ValueError(since)
        except (RelayError, ValueError, KeyError) as exc:
            message = str(exc) if isinstance(exc, RelayError) else "cannot read that time"
            return self.outcome(request, session, "Nothing replayed", message, None, 400)
        chosen = repair.failed_deliveries(self.store, since=since)
        if request.method != "POST":  # GET or HEAD: the confirmation only
            return self.render(request, "confirm_replay_failed.html", session, rows=chosen,
                               since=since, since_text=text, shown=PAGE_SIZE)
        n = repair.replay(self.store, chosen)
        for d in chosen:
            self.console.audit(session, "replay", d.event_id, delivery_id=d.id,
                               delivery_action=d.action)
        return self.outcome(request, session, "Replayed",
                            f"{n} failed deliveries are pending again with a fresh retry "
                            "budget; the workers pick them up now.", None)

    def outcome(self, request: Request, session: Session, title: str, message: str,
                event_id: str | None, status: int = 200) -> Response:
        return self.render(request, "outcome.html", session, status, title=title,
                           message=message, event_id=event_id, ok=status < 400)

