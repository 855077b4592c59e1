"""The console and deliveries whose outcome is unknown: counted on the overview, listed
beside the failed ones, settled from the event's page; the filed document's id shown."""

from __future__ import annotations

import time

from suki_relay.store import DONE, UNKNOWN, Outcome

from .conftest import LogRecords
from .test_console import Relay, audits, form_csrf, relay, signed_in, start  # noqa: F401


def in_doubt(relay: Relay, done: bool = False) -> None:  # noqa: F811
    claimed, _ = relay.store.claim("test", 100, 30, {"ehr": 10})
    now = time.time()
    relay.store.finish([(c, "test", Outcome("ok", now, 0.01, DONE, http_status=201,
                                            note="created DocumentReference/eDoc7") if done
                         else Outcome("unknown", now, 0.01, UNKNOWN,
                                      error="FHIR server: connection failed after the create "
                                            "was sent")) for c in claimed])


def test_an_unknown_delivery_is_settled_from_the_event_page(relay: Relay,  # noqa: F811
                                                             relay_log: LogRecords) -> None:
    first, second = relay.receive(), relay.receive()
    in_doubt(relay)
    client = signed_in(relay)
    assert "outcome unknown, to settle</dt><dd>2" in client.get("/console/").text
    listed = client.get("/console/failed").text
    assert "Outcome unknown" in listed and first in listed and second in listed
    page = client.get(f"/console/events/{first}").text
    assert "Settle as filed" in page and "Not filed: send it" in page
    delivery = relay.store.event(first).deliveries[0].delivery.id
    csrf = form_csrf(page)
    bad = client.post("/console/resolve", data={"event": first, "delivery": delivery,
                                                "how": "filed", "filed": "junk", "csrf": csrf})
    assert bad.status_code == 400 and relay.delivery_states(first) == ["unknown"]
    done = client.post("/console/resolve", data={"event": first, "delivery": delivery,
                                                 "how": "filed",
                                                 "filed": "DocumentReference/eDoc7", "csrf": csrf})
    assert done.status_code == 200 and relay.delivery_states(first) == ["done"]
    assert "settled by ops (console): filed DocumentReference/eDoc7" in client.get(
        f"/console/events/{first}").text
    again = client.post("/console/resolve", data={"event": first, "delivery": delivery,
                                                  "how": "not-filed", "csrf": csrf})
    assert again.status_code == 409
    other = relay.store.event(second).deliveries[0].delivery.id
    sent = client.post("/console/resolve", data={"event": second, "delivery": other,
                                                 "how": "not-filed", "csrf": csrf})
    assert sent.status_code == 200 and relay.delivery_states(second) == ["pending"]
    nosurf = client.post("/console/resolve", data={"event": second, "delivery": other,
                                                   "how": "not-filed"})
    assert nosurf.status_code == 403
    assert [(a["action"], a["event_id"]) for a in audits(relay_log)] == [
        ("resolve", first), ("resolve", second)]


def test_the_filed_documents_id_is_on_the_event_page(relay: Relay) -> None:  # noqa: F811
    event_id = relay.receive()
    in_doubt(relay, done=True)
    page = signed_in(relay).get(f"/console/events/{event_id}").text
    assert "created DocumentReference/eDoc7" in page
