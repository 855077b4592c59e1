"""Replay and reroute, decided once for every way in (the CLI and the console).

Both are the store's own repair operations: a replay re-opens deliveries
(``Store.reopen``), a reroute plans the deliveries an event lacks under the current
rules (``Store.add_deliveries``). What is chosen, and what is refused, lives here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from suki_relay.errors import RelayError
from suki_relay.store import FAILED, IN_FLIGHT

if TYPE_CHECKING:
    from suki_relay.store import Administering, DeliveryRow, EventDetail


class NoSuchEvent(RelayError):
    """The event is not in the store (never received, or pruned)."""


def event_of(store: Administering, event_id: str) -> EventDetail:
    detail = store.event(event_id)
    if detail is None:
        raise NoSuchEvent(f"no event {event_id}")
    return detail


def event_deliveries(store: Administering, event_id: str, *, failed_only: bool = False,
                     action: str | None = None) -> list[DeliveryRow]:
    """The deliveries of one event a replay would re-open (never one in flight)."""
    return [dd.delivery for dd in event_of(store, event_id).deliveries
            if (not failed_only or dd.delivery.state == FAILED)
            and (not action or dd.delivery.action == action)
            and dd.delivery.state != IN_FLIGHT]


def failed_deliveries(store: Administering, since: float | None = None, action: str | None = None,
                      limit: int = 10000) -> list[DeliveryRow]:
    """Failed deliveries (that changed since ``since``), most recently changed first."""
    return list(store.deliveries(state=FAILED, action=action, since=since, limit=limit))


def replay(store: Administering, deliveries: list[DeliveryRow]) -> int:
    """Re-open these deliveries: due now, with a fresh retry budget."""
    return store.reopen([d.id for d in deliveries])


@dataclass(frozen=True)
class ReroutePlan:
    event_id: str
    rules: list[str]
    new_actions: list[str]
    existing_actions: list[str]


def plan_reroute(config: Any, store: Administering, event_id: str) -> ReroutePlan:
    """What the current rules would add to a stored event (nothing is changed)."""
    from suki_relay.config.routing import route

    detail = event_of(store, event_id)
    if detail.event.malformed:
        raise RelayError(f"event {event_id} is malformed; nothing to route")
    plan = route(config.rules, config.unmatched, json.loads(detail.body))
    have = {dd.delivery.action for dd in detail.deliveries}
    return ReroutePlan(event_id, plan.rules, [a for a in plan.actions if a not in have],
                       sorted(have))


def reroute(config: Any, store: Administering, event_id: str) -> ReroutePlan:
    """Plan and add the deliveries the event lacks under the current rules."""
    plan = plan_reroute(config, store, event_id)
    store.add_deliveries(event_id, plan.rules, plan.new_actions)
    return plan
