"""``slack``: post to a Slack incoming webhook (text, optionally Block Kit blocks).

Every string taken from the payload has Slack's control characters (& < >) escaped before
templates see it, so an error message cannot add mentions or links; text written in the
template itself is sent as written. 429 honours Retry-After, 5xx retries, and Slack's 4xx
answers (invalid_payload, no_service, channel_not_found, ...) are permanent and named.
"""

from __future__ import annotations

import re
from typing import Any

from suki_relay.plugin import (
    MASK,
    Action,
    Delivery,
    Option,
    map_strings,
    outbound,
    render_value,
    slack_escape,
)

_SLACK_ERROR = re.compile(r"[a-z_]{2,60}")


class SlackAction(Action):
    description = "post a message to a Slack incoming webhook"
    options = {
        "webhook_url": Option(str, required=True, secret=True, template=False,
                              help="https://hooks.slack.com/services/..."),
        "text": Option(str, default="Suki session {{ event.session_id }}: {{ event.status }}",
                       help="the message (payload strings escaped for Slack)"),
        "blocks": Option(list, help="Block Kit blocks; strings are templates"),
        "username": Option(str, help="the name the message is posted under"),
        "icon_emoji": Option(str, help="the emoji shown as its icon, e.g. :hospital:"),
        "timeout_seconds": Option(float, default=10.0, template=False,
                                  help="bounds the whole request, not each read"),
    }

    def check(self) -> list[str]:
        if not str(self.values["webhook_url"]).startswith(("https://", "http://")):
            return ["webhook_url: expected an https:// URL"]
        problem = outbound.url_problem(self.values["webhook_url"])
        return [f"webhook_url: {problem}"] if problem else []

    def payload(self, delivery: Delivery) -> dict[str, Any]:
        context = delivery.context()
        context["event"] = map_strings(delivery.event, slack_escape)
        body: dict[str, Any] = {"text": render_value(self.values["text"], context)}
        for key in ("blocks", "username", "icon_emoji"):
            if self.values[key] is not None:
                body[key] = render_value(self.values[key], context)
        return body

    def deliver(self, delivery: Delivery) -> str | None:
        resp = outbound.send(self.http, "POST", self.values["webhook_url"],
                             json=self.payload(delivery), timeout=self.values["timeout_seconds"],
                             what="Slack", delivery=delivery)
        text = resp.text.strip()[:60]
        outbound.raise_for_status(resp, "Slack", text if _SLACK_ERROR.fullmatch(text) else "")
        return outbound.delivered_note(resp, "posted")

    def preview(self, delivery: Delivery) -> dict[str, Any]:
        return {"webhook_url": MASK, "json": self.payload(delivery)}
