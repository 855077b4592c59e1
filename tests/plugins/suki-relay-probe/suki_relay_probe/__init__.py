"""``probe``: a third-party action for the relay's own tests. It POSTs what its deliver()
received (the relations and documents in ``delivery.fetched``) to a local URL, so a test
can see exactly what a plugin installed through the entry point group is handed."""

from __future__ import annotations

from suki_relay.plugin import Action, Delivery, Option, outbound


class ProbeAction(Action):
    description = "test plugin: report what deliver() was handed"
    options = {"url": Option(str, required=True, template=False)}

    def deliver(self, delivery: Delivery) -> str | None:
        report = {"attempt": delivery.attempt, "fetched": delivery.fetched}
        resp = outbound.send(self.http, "POST", self.values["url"], json=report, timeout=10,
                             what="probe", delivery=delivery)
        outbound.raise_for_status(resp, "probe")
        return "reported"
