"""The console under hostile use (issue 21): HEAD, proxies, odd inputs, shared throttling.

Same in-process relay and helpers as tests/test_console.py.
"""

from __future__ import annotations

from collections.abc import Callable

from .conftest import LogRecords
from .test_console import Relay, audits, config_text, relay, signed_in, start  # noqa: F401

# ---------------------------------------------------------------- HEAD changes nothing


def test_head_is_get_without_side_effects(relay: Relay, relay_log: LogRecords,  # noqa: F811
                                          start: Callable[..., Relay]) -> None:  # noqa: F811
    """Prefetchers and link checkers send HEAD with the session cookie and no form token:
    werkzeug answers it on every GET route, and it must change nothing."""
    event_id = relay.receive()
    relay.fail_all()
    client = signed_in(relay)
    delivery = relay.store.event(event_id).deliveries[0].delivery.id
    for path in (f"/console/replay?event={event_id}&delivery={delivery}",
                 "/console/replay-failed?since=1h", f"/console/events/{event_id}/reroute"):
        head = client.head(path)
        assert head.status_code == client.get(path).status_code == 200, path
        assert head.data == b""
    assert relay.delivery_states(event_id) == ["failed"]
    assert not audits(relay_log)
    # a reroute that would add a delivery is not made by HEAD either
    rerouting = start(config_text(rules=[{"name": "all", "do": ["ehr", "audit"]}]))
    client = signed_in(rerouting)
    assert client.head(f"/console/events/{event_id}/reroute").status_code == 200
    assert rerouting.delivery_actions(event_id) == ["ehr"] and not audits(relay_log)
    # HEAD signed out: the same redirect to the sign-in page as GET, not a 403
    anonymous = relay.client()
    assert anonymous.head("/console/failed").status_code == 303
