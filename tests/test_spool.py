"""The local spool during a PostgreSQL outage, with the relay in this process.

Every outage here is made on a private database (PrivateDatabase: connections to it refused
and ended), never on the shared server or its `test` database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from suki_relay import protocol
from suki_relay.receive.drain import Drainer
from suki_relay.store import NewEvent, open_store
from suki_relay.store.spool import Spool
from suki_relay.testing import SECRET, Sink, unique_body, wait_until
from tests.support.relay import PrivateDatabase

from .conftest import FAST_DELIVERY, http_action


@pytest.fixture
def spooling_relay(tmp_path: Path, private_db: PrivateDatabase, local_relay
                   ) -> Callable[..., Any]:
    """An in-process relay on the private database, delivering to ``target``."""

    def make(target: str, deliver: bool = True, **top_level: Any) -> Any:
        path = tmp_path / "actions.yaml"
        path.write_text(yaml.safe_dump({
            "receiver": {"secrets": [SECRET]}, "store": private_db.url,
            "delivery": FAST_DELIVERY, "actions": {"target": http_action(target)},
            "rules": [{"name": "all", "do": ["target"]}], **top_level}))
        return local_relay(path, deliver=deliver)

    return make


def answer(resp: Any) -> tuple[int, Any]:
    return resp.status_code, resp.json


def readyz(relay: Any) -> tuple[int, Any]:
    return answer(relay.client.get("/readyz"))


def metrics_text(relay: Any) -> str:
    return str(relay.client.get("/metrics").get_data(as_text=True))


def delivered_events(target: Sink) -> list[str]:
    return [got.headers["X-Suki-Relay-Event"] for got in target.received]


def test_spool_takes_what_the_store_cannot_and_drains_it(tmp_path: Path, spooling_relay,
                                                         private_db, sink) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    relay = spooling_relay(target.url)
    private_db.down()
    accepted = []
    for _ in range(5):
        status, body = answer(relay.post_signed(unique_body()))
        assert (status, body["status"], body["spooled"]) == (200, "accepted", True)
        accepted.append(body["event_id"])
    spool_file = tmp_path / "suki-relay-spool.db"  # the default: next to actions.yaml
    assert spool_file.stat().st_mode & 0o777 == 0o600
    assert readyz(relay) == (200, {"status": "degraded", "store": "unavailable",
                                   "spooled": 5})
    metrics = metrics_text(relay)
    assert "suki_relay_spool_events 5.0" in metrics
    assert "suki_relay_spooled_total 5.0" in metrics
    assert not target.received  # nothing is delivered before it is in the store

    private_db.up()
    status, body = answer(relay.post_signed(unique_body()))  # the first request after the outage
    assert status == 200 and "spooled" not in body  # committed to the store itself
    accepted.append(body["event_id"])
    wait_until(lambda: len(target.received) >= 6, timeout=30, message="every event delivered")
    store = open_store(private_db.url)
    try:
        wait_until(lambda: all(d.state == "done" for d in store.deliveries()), timeout=30,
                   message="every delivery finished")
        assert sorted(delivered_events(target)) == sorted(accepted)  # each once, none lost
        for event_id in accepted:  # spooled events keep their ids in the store
            assert store.event(event_id) is not None
    finally:
        store.close()
    assert readyz(relay)[1]["spooled"] == 0
    metrics = metrics_text(relay)
    assert "suki_relay_spool_drained_total 5.0" in metrics


def test_spool_disabled_answers_503_and_recovers_at_once(spooling_relay, private_db,
                                                         sink) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    relay = spooling_relay(target.url, spool={"enabled": False})
    assert relay.post_signed(unique_body()).status_code == 200
    for _ in range(3):  # the pool's reconnect backoff made this fail in 2 runs of 3
        private_db.down()
        status, body = answer(relay.post_signed(unique_body()))
        assert (status, body["error"]) == (503, "store_unavailable")
        assert readyz(relay)[0] == 503
        private_db.up()
        status, body = answer(relay.post_signed(unique_body()))  # the very next request commits
        assert (status, body["status"]) == (200, "accepted")
        assert readyz(relay)[0] == 200


def test_a_full_spool_takes_exactly_max_events(spooling_relay, private_db,
                                               sink) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    relay = spooling_relay(target.url, spool={"max_events": 5})
    private_db.down()
    answers = [answer(relay.post_signed(unique_body())) for _ in range(7)]
    assert [status for status, _ in answers] == [200] * 5 + [503] * 2
    assert all(body["error"] == "store_unavailable" for _, body in answers[5:])
    assert readyz(relay)[0] == 503  # the node can take nothing: take it out
    metrics = metrics_text(relay)
    assert 'suki_relay_requests_total{outcome="spool_full"} 2.0' in metrics
    private_db.up()
    wait_until(lambda: len(target.received) >= 5, timeout=30, message="the 5 spooled delivered")
    time.sleep(0.5)
    assert sorted(delivered_events(target)) == sorted(body["event_id"] for _, body in answers[:5])


def test_the_same_request_twice_is_one_event(spooling_relay, private_db,
                                             sink) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    relay = spooling_relay(target.url, deliver=False)
    during, after = unique_body(), unique_body()
    during_headers = protocol.signed_headers(SECRET, during)
    after_headers = protocol.signed_headers(SECRET, after)
    private_db.down()
    status, first = answer(relay.post(during, during_headers))
    assert (status, first["status"]) == (200, "accepted")
    status, again = answer(relay.post(during, during_headers))  # twice during the outage
    assert (status, again["status"], again["event_id"]) == (200, "duplicate", first["event_id"])
    status, spooled = answer(relay.post(after, after_headers))  # spooled, then repeated afterwards
    assert status == 200 and spooled["spooled"]
    private_db.up()
    status, repeated = answer(relay.post(after, after_headers))
    assert (status, repeated["status"], repeated["event_id"]) == \
        (200, "duplicate", spooled["event_id"])
    store = open_store(private_db.url)
    try:
        wait_until(lambda: not relay.app.spool.summary()["spooled"], timeout=30,
                   message="the spool drained")
        events = store.events(_all())
        assert len(events) == 2
        assert sum(sum(e.deliveries.values()) for e in events) == 2  # one delivery each
        assert store.event(first["event_id"]) is not None
    finally:
        store.close()


def _all() -> Any:
    from suki_relay.store import EventFilter

    return EventFilter(limit=1000)


def test_a_drain_cut_short_after_its_commit_moves_nothing_twice(tmp_path: Path,
                                                                private_db) -> None:  # type: ignore[no-untyped-def]
    """kill -9 between the store's commit and the spool's delete: the next drain finds
    every event already in the store and plans nothing again."""
    store = open_store(private_db.url)
    spool = Spool(tmp_path / "spool.db", 100)
    try:
        events = [_event(i) for i in range(4)]
        assert all(r is not None and not r.duplicate for r in spool.add(events))
        store.record(spool.oldest(2))  # the first drain committed two, then died
        assert Drainer(spool, store).drain() == 4
        assert spool.summary()["spooled"] == 0
        rows = store.events(_all())
        assert sorted(r.id for r in rows) == sorted(e.id for e in events)
        assert [r.deliveries for r in rows] == [{"pending": 1}] * 4
    finally:
        store.close()
        spool.close()


def test_an_event_the_store_refuses_does_not_hold_back_the_rest(tmp_path: Path,
                                                                private_db) -> None:  # type: ignore[no-untyped-def]
    store = open_store(private_db.url)
    spool = Spool(tmp_path / "spool.db", 100)
    try:
        poison = _event(0, session_id="nul\x00")  # PostgreSQL text refuses NUL
        good = [_event(i) for i in range(1, 4)]
        spool.add([poison, *good])
        assert Drainer(spool, store).drain() == 4
        rows = {r.id: r for r in store.events(_all())}
        assert set(rows) == {e.id for e in [poison, *good]}
        assert rows[poison.id].malformed  # kept as the receiver keeps what it cannot store
        assert all(not rows[e.id].malformed and rows[e.id].deliveries == {"pending": 1}
                   for e in good)
        assert spool.summary()["spooled"] == 0
    finally:
        store.close()
        spool.close()


def _event(i: int, **fields: Any) -> NewEvent:
    body = unique_body()
    values: dict[str, Any] = {
        "dedup_key": f"k{i}-{body[-20:]!r}", "body": body, "generated_at": 1, "status": "failure",
        "session_id": f"s{i}", "encounter_id": None, "malformed": False, "rules": ["all"],
        "actions": ["target"], **fields}
    return NewEvent(**values)


def test_a_receive_only_node_drains_too(spooling_relay, private_db,
                                        sink) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    relay = spooling_relay(target.url, deliver=False)
    assert relay.app.deliverer is None and relay.app.drainer is not None
    private_db.down()
    ids = [relay.post_signed(unique_body()).json["event_id"] for _ in range(3)]
    private_db.up()
    store = open_store(private_db.url)
    try:
        wait_until(lambda: all(store.event(i) for i in ids), timeout=30,
                   message="spooled events moved into the store by a receive-only node")
    finally:
        store.close()


def test_a_node_starts_and_spools_while_the_database_is_down(spooling_relay, private_db,
                                                             sink) -> None:  # type: ignore[no-untyped-def]
    target = sink()
    spooling_relay(target.url).stop()  # the schema exists, as on any restart
    private_db.down()
    relay = spooling_relay(target.url)
    status, body = answer(relay.post_signed(unique_body()))
    assert (status, body.get("spooled")) == (200, True)
    private_db.up()
    wait_until(lambda: delivered_events(target) == [body["event_id"]], timeout=30,
               message="the event spooled at start delivered")
