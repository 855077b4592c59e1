"""``http``: forward the event to a URL (by default the original body, byte for byte)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from suki_relay import protocol
from suki_relay.plugin import Action, Delivery, Option, mask_secret_keys, outbound


class HttpAction(Action):
    description = "POST the event (or a rendered body) to a URL"
    options = {
        "url": Option(str, required=True, help="target URL"),
        "method": Option(str, default="POST", choices=("POST", "PUT", "PATCH"), template=False,
                         help="the HTTP method"),
        "headers": Option(dict, default={}, help="extra headers; values are templates"),
        "body": Option(str, help="template; default: the original raw body, verbatim"),
        "content_type": Option(str, default="application/json", template=False,
                               help="the Content-Type of the body sent"),
        "timeout_seconds": Option(float, default=10.0, template=False,
                                  help="bounds the whole request, not each read"),
        "sign_secret": Option(str, secret=True, template=False,
                              help="sign what is forwarded the way Suki signs"),
        "sign_window_seconds": Option(float, default=240.0, template=False, min=1, max=3600,
                                      help="retries within this long sign alike; keep it "
                                           "under the receiver's tolerance"),
    }

    def check(self) -> list[str]:
        url = self.values["url"]
        if isinstance(url, str) and not url.startswith(("http://", "https://")):
            return ["url: expected an http:// or https:// URL"]
        problem = outbound.url_problem(url) if isinstance(url, str) else None
        if problem:
            return [f"url: {problem}"]
        if not 0 < self.values["timeout_seconds"] <= 300:
            return ["timeout_seconds: expected more than 0 and at most 300"]
        return []

    def request(self, delivery: Delivery) -> tuple[str, dict[str, str], bytes]:
        """The url, headers and body this delivery sends."""
        url = self.render("url", delivery)
        body_text = self.render("body", delivery)
        body = delivery.raw_body if body_text is None else body_text.encode("utf-8")
        headers = {"Content-Type": self.values["content_type"],
                   "Idempotency-Key": delivery.id,
                   "User-Agent": "suki-relay",
                   "X-Suki-Relay-Event": delivery.event_id}
        headers.update({str(k): str(v) for k, v in self.render("headers", delivery).items()})
        if self.values["sign_secret"]:
            # signed once per delivery: retries carry the same generated-at and signature
            received = datetime.fromisoformat(delivery.received_at).timestamp()
            signed = protocol.signed_headers(self.values["sign_secret"], body, protocol.stable_time(
                received, self.values["sign_window_seconds"]))
            headers["generated-at"] = signed["generated-at"]
            headers["X-API-Key"] = signed["X-API-Key"]
        return url, headers, body

    def deliver(self, delivery: Delivery) -> str | None:
        url, headers, body = self.request(delivery)
        resp = outbound.send(self.http, self.values["method"], url, headers=headers,
                             data=body, timeout=self.values["timeout_seconds"],
                             what=f"{self.name} target", delivery=delivery)
        outbound.raise_for_status(resp, f"{self.name} target")
        return outbound.delivered_note(resp)

    def preview(self, delivery: Delivery) -> dict[str, Any]:
        url, headers, body = self.request(delivery)
        return {"method": self.values["method"], "url": url,
                "headers": mask_secret_keys(headers), "body": body.decode("utf-8", "replace")}
