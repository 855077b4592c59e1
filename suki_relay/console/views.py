"""The console's pages: what each one reads from the store and what each action does.

Reads are the store's admin reads; replay and reroute are the same repair operations
the CLI runs (suki_relay.recover.repair). Every action has a confirmation page (GET) and does
its work only on a POST carrying the session's CSRF token, then shows the outcome; any
other method (HEAD, which werkzeug answers on every GET route) reads only.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from werkzeug.exceptions import NotFound
from werkzeug.utils import redirect
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
BULK_LIMIT = 10000  # deliveries one bulk replay re-opens at most
REFRESH_SECONDS = 30  # the overview reloads itself this often
CHARTS_SECONDS = 30.0
REPLAYABLE = ("failed", "unknown", "pending")  # states a bulk replay may select
# what an operator can do about a delivery in each state
SETTLES = {"pending": "waits for its next try (replay makes it due now)",
           "in_flight": "being attempted now",
           "done": "delivered (replay sends it again)",
           "failed": "replay sends it again with a fresh retry budget",
           "unknown": "the outcome could not be established: check the target, then settle "
                      "it on this page (filed, or send it)"}


def target_of(spec: Any) -> str | None:
    """Where an action sends: scheme, host and path of its ``url`` (never the query
    string, which may hold a secret), when it has a plain one."""
    values = getattr(getattr(spec, "action", None), "values", None) or {}
    url = values.get("url") or values.get("base_url")
    if not isinstance(url, str):  # a template: where it goes depends on the event
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}" \
           f"{parts.path}" if parts.scheme else None
_REFERENCE = re.compile(r"[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}")  # what `resolve --filed` takes
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
        self._charts: tuple[float, list[Any]] | None = None

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
        paused: list[Any] = []
        refused = None
        drawn: list[Any] = []
        try:
            stats = self.store.stats()
            counts = {"hour": self.store.count_events(now - 3600),
                      "day": self.store.count_events(now - 86400)}
            paused = [a for a in self.store.action_states() if a.state == "paused"]
            refused = sum(r.count for r in self.store.rejections(since=now - 86400, limit=1000))
            drawn = self.charts()
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
                           facts=facts, paused=paused, refused=refused, charts=drawn,
                           refresh=REFRESH_SECONDS)

    def charts(self) -> list[Any]:
        """The overview's charts, drawn at most every CHARTS_SECONDS per process (every
        open overview refreshes itself, and the store's reads cover a day)."""
        from suki_relay.console.charts import charts

        now = time.monotonic()
        if self._charts is None or now - self._charts[0] >= CHARTS_SECONDS:
            self._charts = (now, charts(self.store.activity(time.time() - 86400)))
        return self._charts[1]

    # ------------------------------------------------------------ what is lost or held up

    def refused(self, request: Request, session: Session) -> Response:
        rows = self.store.rejections(limit=PAGE_SIZE * 4)
        return self.render(request, "refused.html", session, rows=rows)

    def deliveries(self, request: Request, session: Session) -> Response:
        args = request.args
        form = {k: args.get(k, "").strip()[:200] for k in ("action", "state", "since", "until",
                                                           "id")}
        error = None
        rows: list[Any] = []
        try:
            rows = self.store.deliveries(**self._delivery_filter(form), limit=PAGE_SIZE * 2)
        except StoreError:
            raise
        except (RelayError, ValueError) as exc:
            error = str(exc) if isinstance(exc, RelayError) else "cannot read that filter"
        states = self.store.delivery_states()
        paused = {a.action for a in self.store.action_states() if a.state == "paused"}
        return self.render(request, "deliveries.html", session, rows=rows, form=form,
                           error=error, states=states, actions=sorted(self.config.actions),
                           paused=paused,
                           settles=SETTLES, now=time.time(), status=400 if error else 200)

    @staticmethod
    def _delivery_filter(form: dict[str, str]) -> dict[str, Any]:
        return {"action": form.get("action") or None, "state": form.get("state") or None,
                "since": _since(form["since"]) if form.get("since") else None,
                "until": _since(form["until"]) if form.get("until") else None,
                "delivery_id": form.get("id") or None}

    def attempt(self, request: Request, session: Session, delivery_id: str,
                attempt: int) -> Response:
        found = self.store.deliveries(delivery_id=delivery_id, limit=1)
        if not found:
            raise NotFound(f"There is no delivery {delivery_id}.")
        d = found[0]
        detail = self._event(d.event_id)
        attempts = [a for dd in detail.deliveries if dd.delivery.id == delivery_id
                    for a in dd.attempts if a.attempt == attempt]
        if not attempts:
            raise NotFound(f"Delivery {delivery_id} has no attempt {attempt}.")
        spec = self.config.actions.get(d.action)
        return self.render(request, "attempt.html", session, delivery=d, a=attempts[0],
                           event=detail.event, type=spec.type if spec else None,
                           target=target_of(spec))

    def search(self, request: Request, session: Session) -> Response:
        """An event id, a delivery id, a session id or an encounter id: where it leads."""
        term = request.args.get("q", "").strip()[:200]
        if not term:
            return self.render(request, "outcome.html", session, 400, title="Search",
                               message="Give an event, delivery, session or encounter id.",
                               event_id=None, ok=False)
        if self.store.event(term) is not None:
            return redirect(f"{self.console.prefix}/events/{term}", 303)
        found = self.store.deliveries(delivery_id=term, limit=1)
        if found:
            return redirect(f"{self.console.prefix}/events/{found[0].event_id}#d-{term}", 303)
        for key, wanted in (("session", EventFilter(session_id=term, limit=1)),
                            ("encounter", EventFilter(encounter_id=term, limit=1))):
            if self.store.events(wanted):
                return redirect(f"{self.console.prefix}/events?{urlencode({key: term})}", 303)
        return self.render(request, "outcome.html", session, 404, title="Nothing found",
                           message="No event, delivery, session or encounter has that id.",
                           event_id=None, ok=False)

    def replay_bulk(self, request: Request, session: Session) -> Response:
        """Replay every delivery a filter (action, state, time range) selects. The
        confirmation counts them; the POST replays those that the same filter selects up
        to the moment the confirmation was shown (``until`` pinned), so the number
        confirmed is the number replayed unless one changed in between."""
        values = request.values
        form = {k: values.get(k, "").strip()[:200] for k in ("action", "state", "since", "until")}
        try:
            criteria = self._delivery_filter(form)
            if criteria["state"] not in REPLAYABLE:
                raise RelayError("choose the state of the deliveries to replay: "
                                 + ", ".join(REPLAYABLE))
            if request.method == "POST":
                criteria["until"] = float(request.form["pinned"])
                if not math.isfinite(criteria["until"]):
                    raise ValueError(criteria["until"])
            elif criteria["until"] is None:
                criteria["until"] = time.time()
        except (RelayError, ValueError, KeyError) as exc:
            message = str(exc) if isinstance(exc, RelayError) else "cannot read that filter"
            return self.outcome(request, session, "Nothing replayed", message, None, 400)
        chosen = self.store.deliveries(**criteria, limit=BULK_LIMIT)
        if request.method != "POST":  # GET or HEAD: the confirmation only
            return self.render(request, "confirm_replay_bulk.html", session, rows=chosen,
                               form=form, pinned=repr(criteria["until"]), shown=PAGE_SIZE,
                               limit=BULK_LIMIT)
        n = repair.replay(self.store, chosen)
        for d in chosen:  # a log line each; one row of the audit trail for them all
            self.console.audit(session, "replay", d.event_id, request, stored=False,
                               delivery_id=d.id, delivery_action=d.action)
        self.console.record(session.user, session.role, "bulk replay", None,
                            f"count={n} " + " ".join(f"{k}={v}" for k, v in form.items() if v),
                            request)
        return self.outcome(request, session, "Replayed",
                            f"{n} deliveries are pending again with a fresh retry budget; "
                            "the workers pick them up now.", None)

    def resume(self, request: Request, session: Session, action: str) -> Response:
        if request.method != "POST":  # GET or HEAD: the confirmation only
            states = {a.action: a for a in self.store.action_states()}
            return self.render(request, "confirm_resume.html", session, action=action,
                               state=states.get(action))
        changed = self.store.resume(action)
        self.console.audit(session, "resume", action, request,  # a state change: WARNING
                           logging.WARNING if changed else logging.INFO, changed=changed)
        return self.outcome(request, session, "Resumed" if changed else "Not paused",
                            f"{action} is active again; its waiting deliveries are due now."
                            if changed else f"{action} was not paused. Nothing was changed.",
                            None, 200 if changed else 409)

    def audit(self, request: Request, session: Session) -> Response:
        user = request.args.get("user", "").strip()[:64] or None
        rows = self.store.audit_log(limit=PAGE_SIZE * 4, user=user)
        return self.render(request, "audit.html", session, rows=rows, user=user or "")

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
        self.console.audit(session, "show payload", event_id, request)
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
        self.console.audit(session, "reroute", event_id, request, added=len(plan.new_actions))
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
        unknown = self.store.deliveries(state="unknown", limit=PAGE_SIZE)
        return self.render(request, "failed.html", session, rows=rows[:PAGE_SIZE],
                           more=len(rows) > PAGE_SIZE, since=request.args.get("since", "24h"),
                           unknown=unknown)

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
        self.console.audit(session, "replay", event_id, request, delivery_id=delivery_id,
                           delivery_action=chosen[0].action)
        return self.outcome(request, session, "Replayed",
                            f"Delivery {delivery_id} to {chosen[0].action} is pending "
                            "again with a fresh retry budget; the workers pick it up now.",
                            event_id)

    def resolve(self, request: Request, session: Session) -> Response:
        """Settle a delivery whose outcome is unknown: filed (as TYPE/ID) or not (send it)."""
        event_id = request.form.get("event", "")
        delivery_id = request.form.get("delivery", "")
        filed = request.form.get("filed", "").strip() if request.form.get("how") == "filed" \
            else None
        if filed is not None and not _REFERENCE.fullmatch(filed):
            return self.outcome(request, session, "Nothing settled", "Give what the target "
                                "holds as a reference such as DocumentReference/123.",
                                event_id, 400)
        state = self.store.resolve(delivery_id, filed, f"{session.user} (console)")
        if state is None:
            return self.outcome(request, session, "Nothing settled", "That delivery's outcome "
                                "is not unknown (settled already, or never in doubt).",
                                event_id, 409)
        self.console.audit(session, "resolve", event_id, request, delivery_id=delivery_id,
                           filed=filed or "not filed")
        return self.outcome(request, session, "Settled",
                            f"Delivery {delivery_id} is done: filed as {filed}." if filed else
                            f"Delivery {delivery_id} is pending: the workers send it now.",
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
        for d in chosen:  # a log line each; one row of the audit trail for them all
            self.console.audit(session, "replay", d.event_id, request, stored=False,
                               delivery_id=d.id, delivery_action=d.action)
        self.console.record(session.user, session.role, "bulk replay", None,
                            f"count={n} state=failed since={since!r}", request)
        return self.outcome(request, session, "Replayed",
                            f"{n} failed deliveries are pending again with a fresh retry "
                            "budget; the workers pick them up now.", None)

    def outcome(self, request: Request, session: Session, title: str, message: str,
                event_id: str | None, status: int = 200) -> Response:
        return self.render(request, "outcome.html", session, status, title=title,
                           message=message, event_id=event_id, ok=status < 400)

