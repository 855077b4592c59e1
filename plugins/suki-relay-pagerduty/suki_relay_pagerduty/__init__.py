"""``pagerduty``: trigger a PagerDuty incident through the Events API v2.

An example of a third-party suki-relay plugin: one class, options declared as data,
``deliver`` raising RetryableError or PermanentError through suki_relay.deliver.outbound, and
everything imported from the one public module, suki_relay.plugin.
"""

from __future__ import annotations

from typing import Any

from suki_relay.plugin import MASK, Action, Delivery, Option, outbound

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


class PagerDutyAction(Action):
    description = "trigger a PagerDuty incident (Events API v2)"
    options = {
        "routing_key": Option(str, required=True, secret=True, template=False,
                              help="the integration key of a PagerDuty service"),
        "summary": Option(str, default="Suki session {{ event.status }}: "
                                       "{{ event.error_code | default('no error code') }}",
                          help="the incident's summary"),
        "severity": Option(str, default="error", template=False,
                           choices=("critical", "error", "warning", "info"),
                           help="the incident's severity"),
        "source": Option(str, default="suki-relay", help="where the incident comes from"),
        "dedup_key": Option(str, default="suki-{{ event.session_id }}",
                            help="incidents with the same key are one incident"),
        "events_url": Option(str, default=EVENTS_URL, template=False,
                             help="the Events API v2 endpoint"),
        "timeout_seconds": Option(float, default=10.0, template=False,
                                  help="bounds the whole request"),
    }

    def event(self, delivery: Delivery) -> dict[str, Any]:
        return {
            "routing_key": self.values["routing_key"],
            "event_action": "trigger",
            "dedup_key": self.render("dedup_key", delivery),
            "payload": {
                "summary": self.render("summary", delivery)[:1024],
                "source": self.render("source", delivery),
                "severity": self.values["severity"],
                "custom_details": {"session_id": delivery.event.get("session_id"),
                                   "encounter_id": delivery.event.get("encounter_id"),
                                   "status": delivery.event.get("status"),
                                   "relay_event_id": delivery.event_id},
            },
        }

    def deliver(self, delivery: Delivery) -> str | None:
        resp = outbound.send(self.http, "POST", self.values["events_url"],
                             json=self.event(delivery), timeout=self.values["timeout_seconds"],
                             what="PagerDuty", delivery=delivery)
        outbound.raise_for_status(resp, "PagerDuty")
        return "incident triggered"

    def preview(self, delivery: Delivery) -> dict[str, Any]:
        return {"url": self.values["events_url"], "json": {**self.event(delivery),
                                                           "routing_key": MASK}}
