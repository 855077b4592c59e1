"""The store on both backends, called as the app, the deliverer and the CLI call it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from suki_relay.store import (
    DONE,
    FAILED,
    IN_FLIGHT,
    PENDING,
    UNKNOWN,
    Claimed,
    ClaimRequest,
    EventFilter,
    NewEvent,
    Outcome,
    Store,
)

from .conftest import open_test_store


@pytest.fixture
def store(tmp_path: Path, store_url: str) -> Store:
    return open_test_store(store_url, tmp_path)


def new(key: str, actions: tuple[str, ...] = ("a",), status: str = "failure", **kw) -> NewEvent:  # type: ignore[no-untyped-def]
    return NewEvent(key, b'{"status": "%s"}' % status.encode(), 1, status, kw.get("session"),
                    None, kw.get("malformed", False), ["r"] if actions else [], list(actions))


def ok(state: str = DONE, **kw) -> Outcome:  # type: ignore[no-untyped-def]
    return Outcome("ok" if state == DONE else "retry", time.time(), 0.01, state, **kw)


def test_record_keeps_the_first_of_each_dedup_key(store: Store) -> None:
    first = store.record([new("k1"), new("k2", ("a", "b"))])
    again = store.record([new("k1"), new("k3"), new("k3")])
    assert [r.duplicate for r in first] == [False, False]
    assert again[0].duplicate and again[0].event_id == first[0].event_id
    assert not again[1].duplicate and again[2].duplicate
    assert again[2].event_id == again[1].event_id
    assert store.stats().events == 3
    assert len(store.deliveries()) == 4  # a duplicate plans nothing


def test_a_batch_of_many_events_keeps_each_field_in_its_own_row(store: Store) -> None:
    """Forty events and their deliveries in one batch (520 parameters for the events: on
    PostgreSQL, numbered placeholders past $9 and $99): each row holds its own values."""
    recorded = store.record([new(f"many{i}", ("a", "b"), session=f"s{i}") for i in range(40)])
    assert not any(r.duplicate for r in recorded)
    rows = {r.session_id: r.id for r in store.events(EventFilter(limit=100))}
    assert rows == {f"s{i}": recorded[i].event_id for i in range(40)}
    planned = store.deliveries(limit=200)
    assert sorted((d.event_id, d.action) for d in planned) == sorted(
        (r.event_id, a) for r in recorded for a in ("a", "b"))


def test_claim_leases_due_deliveries_within_each_actions_limit(store: Store) -> None:
    store.record([new(f"k{i}", ("slow", "fast")) for i in range(5)])
    claimed, full = store.claim("w1", 10, 30, {"slow": 2, "fast": 10})
    by_action = sorted(c.action for c in claimed)
    assert by_action == ["fast"] * 5 + ["slow"] * 2
    assert all(c.attempt == 1 and c.body == b'{"status": "failure"}' for c in claimed)
    more, full = store.claim("w2", 10, 30, {"slow": 2, "fast": 10})
    assert more == [] and "slow" in full  # nothing for a second claimer until one finishes
    assert {d.state for d in store.deliveries(state=IN_FLIGHT)} == {IN_FLIGHT}


def test_finish_records_the_attempt_and_claims_the_next_in_one_go(store: Store) -> None:
    store.record([new("k1"), new("k2")])
    (first,), _ = store.claim("w", 1, 30, {"a": 1})
    following = store.finish([(first, "w", ok(http_status=200))],
                             ClaimRequest("w", 1, 30, {"a": 1}))
    assert len(following) == 1 and following[0].id != first.id
    detail = store.event(first.event_id)
    (d,) = detail.deliveries
    assert d.delivery.state == DONE and d.delivery.last_status == 200
    assert [(a.attempt, a.outcome, a.http_status) for a in d.attempts] == [(1, "ok", 200)]


def test_a_retry_waits_and_a_failure_is_final(store: Store) -> None:
    store.record([new("k1", ("a", "b"))])
    claimed, _ = store.claim("w", 2, 30, {"a": 1, "b": 1})
    later = time.time() + 3600
    store.finish([(c, "w", ok(PENDING, next_attempt_at=later, error="503") if c.action == "a"
                   else Outcome("failed", time.time(), 0.0, FAILED, error="x" * 5000))
                  for c in claimed])
    assert store.claim("w", 2, 30, {"a": 1, "b": 1})[0] == []  # a not due yet, b finished
    states = {d.action: d for d in store.deliveries()}
    assert states["a"].state == PENDING and states["a"].next_attempt_at == pytest.approx(later)
    assert states["b"].state == FAILED and len(states["b"].last_error) == 500  # kept short


def test_an_expired_lease_is_claimed_again_and_the_lost_attempt_recorded(store: Store) -> None:
    store.record([new("k1")])
    (dead,), _ = store.claim("dead-worker", 1, 0.01, {"a": 1})
    time.sleep(0.05)
    (again,), _ = store.claim("w", 1, 30, {"a": 1})
    assert again.id == dead.id and again.attempt == 2
    store.finish([(again, "w", ok())])
    store.finish([(dead, "dead-worker", ok(PENDING))])  # the old owner comes back: ignored
    (d,) = store.event(again.event_id).deliveries
    assert d.delivery.state == DONE
    assert [a.outcome for a in d.attempts] == ["lost", "ok", "retry"]


def test_no_lease_runs_out_while_no_claimer_reaches_the_store(store: Store) -> None:
    """An outage longer than a lease: the first claimer to reach the store after it takes
    over no lease that ran out meanwhile; the owner still alive renews its own and keeps
    it, and the lease of an owner that died during the outage is taken over a lease later."""
    store.record([new("k1"), new("k2")])
    (alive,), _ = store.claim("alive", 1, 1.0, {"a": 2})
    (dead,), _ = store.claim("dead", 1, 1.0, {"a": 2})
    store.extend("alive", [alive.id], 1.0)  # every claimer notes that it reached the store
    time.sleep(1.3)  # no claimer reaches it: both leases run out
    back = time.monotonic()
    assert store.claim("other", 2, 1.0, {"a": 2})[0] == []  # renewed for a lease instead
    # the living claimers go on noting it, and "other" claims, until the dead one's lease
    # is taken over (on a loaded machine a pause of over half a lease between two notes
    # is a silence too, and renews the leases once more: waited for, not timed)
    taken: list[Claimed] = []
    while not taken and time.monotonic() < back + 30:
        store.extend("alive", [alive.id], 1.0)
        store.extend("other", [], 1.0)
        time.sleep(0.05)
        taken = store.claim("other", 2, 1.0, {"a": 2})[0]
    assert time.monotonic() - back >= 1.0  # not before a lease went by since the silence
    assert [(c.id, c.taken_over, c.attempt) for c in taken] == [(dead.id, True, 2)]
    again = taken[0]
    store.finish([(alive, "alive", ok()), (again, "other", ok())])
    outcomes = {d.delivery.id: [a.outcome for a in d.attempts]
                for e in (alive.event_id, dead.event_id) for d in store.event(e).deliveries}
    assert outcomes == {alive.id: ["ok"], dead.id: ["lost", "ok"]}


def test_extend_keeps_a_lease_and_release_hands_it_back(store: Store) -> None:
    store.record([new("k1"), new("k2")])
    claimed, _ = store.claim("w", 2, 0.5, {"a": 2})
    store.extend("w", [c.id for c in claimed], 60)
    time.sleep(0.6)
    assert store.claim("other", 2, 30, {"a": 2})[0] == []  # still leased
    assert store.release("w", [claimed[0].id]) == 1
    assert store.release("w") == 1
    assert store.release("w", []) == 0
    assert {d.state for d in store.deliveries()} == {PENDING}
    assert len(store.claim("other", 2, 30, {"a": 2})[0]) == 2  # due at once


def test_a_delivery_handed_back_mid_attempt_is_taken_over(store: Store) -> None:
    """Given back at shutdown while its attempt was under way: the cut-off attempt is
    recorded as lost and the next claim is a takeover; given back again before its attempt
    began, it still is; once an attempt's outcome is recorded, the next claim is not."""
    store.record([new("k1"), new("k2")])
    (running, waiting), _ = store.claim("w", 2, 30, {"a": 2})
    assert store.release("w", [running.id, waiting.id], under_way=[running.id]) == 2
    claimed, _ = store.claim("next", 2, 30, {"a": 2})
    assert {c.id: c.taken_over for c in claimed} == {running.id: True, waiting.id: False}
    assert store.release("next", [running.id]) == 1  # its attempt had not begun
    (again,), _ = store.claim("third", 1, 30, {"a": 2})
    assert again.id == running.id and again.taken_over and again.attempt == 3
    store.finish([(again, "third", ok(PENDING))])  # an outcome: tried again, due now
    (last,), _ = store.claim("fourth", 1, 30, {"a": 2})
    assert last.id == running.id and not last.taken_over
    (d,) = store.event(running.event_id).deliveries
    assert [(a.attempt, a.outcome) for a in d.attempts] == [(1, "lost"), (3, "retry")]
    assert "handed back mid-attempt" in (d.attempts[0].error or "")


def test_reopen_and_add_deliveries(store: Store) -> None:
    (rec,) = store.record([new("k1")])
    (c,), _ = store.claim("w", 1, 30, {"a": 1})
    store.finish([(c, "w", Outcome("failed", time.time(), 0.0, FAILED, error="no"))])
    assert store.reopen([c.id]) == 1
    (again,), _ = store.claim("w", 1, 30, {"a": 1})
    assert again.id == c.id and again.attempt == 2 and again.tries == 1  # a fresh budget
    store.finish([(again, "w", ok())])
    added = store.add_deliveries(rec.event_id, ["r", "r2"], ["a", "b"])
    assert len(added) == 1
    detail = store.event(rec.event_id)
    assert detail.event.rules == ["r", "r2"]
    assert sorted((d.delivery.action, d.delivery.state) for d in detail.deliveries) == [
        ("a", DONE), ("b", PENDING)]


def test_prune_deletes_only_old_finished_events(store: Store) -> None:
    (done,) = store.record([new("k1")])
    (c,), _ = store.claim("w", 1, 30, {"a": 1})
    store.finish([(c, "w", ok())])
    pending, unmatched = store.record([new("k2"), new("k3", ())])
    assert store.prune(time.time() - 3600) == 0
    assert store.prune(time.time() + 1) == 2  # done, and nothing to deliver: finished
    assert [e.id for e in store.events(EventFilter())] == [pending.event_id]
    assert store.event(done.event_id) is None and store.event(unmatched.event_id) is None
    assert [d.event_id for d in store.deliveries()] == [pending.event_id]


def test_events_filter_and_count_deliveries(store: Store) -> None:
    store.record([new("k1", session="s1"), new("k2", (), status="timeout"),
                  new("k3", (), malformed=True)])
    assert len(store.events(EventFilter())) == 3
    assert [e.session_id for e in store.events(EventFilter(session_id="s1"))] == ["s1"]
    assert [e.status for e in store.events(EventFilter(matched=False, malformed=False))] == [
        "timeout"]
    assert len(store.events(EventFilter(malformed=True))) == 1
    assert store.events(EventFilter(until=time.time() - 60)) == []
    assert len(store.events(EventFilter(limit=2))) == 2
    (matched,) = store.events(EventFilter(matched=True))
    assert matched.deliveries == {PENDING: 1} and matched.rules == ["r"]
    assert store.event("evt_nope") is None


def test_stats_count_every_state(store: Store) -> None:
    assert store.stats().deliveries == {PENDING: 0, IN_FLIGHT: 0, DONE: 0, FAILED: 0, UNKNOWN: 0}
    assert store.stats().oldest_pending_age_seconds == 0  # nothing waits
    old, recent = new("k1"), new("k2")
    old.received_at = time.time() - 600  # planned ten minutes ago
    store.record([old, recent])
    store.claim("w", 1, 30, {"a": 1})  # takes the older one
    stats = store.stats()
    assert stats.events == 2 and stats.deliveries[PENDING] == 1
    assert stats.deliveries[IN_FLIGHT] == 1
    assert 590 <= stats.oldest_pending_age_seconds < 3600  # the unfinished one, in flight


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_batch_is_recorded_in_one_insert_per_table(store: Store) -> None:
    """The request path's cost: a group commit of many events is two INSERT statements
    (events, then deliveries), whatever the batch size."""
    statements: list[str] = []
    conn = store.db._writer()  # type: ignore[attr-defined]  # the one every write uses
    conn.set_trace_callback(statements.append)
    try:
        store.record([new(f"k{i}", ("a", "b")) for i in range(100)])
    finally:
        conn.set_trace_callback(None)
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    assert len(inserts) == 2, inserts


def test_claimed_carries_what_an_attempt_needs(store: Store) -> None:
    (rec,) = store.record([new("k1")])
    (c,), _ = store.claim("w", 1, 30, {"a": 1})
    assert isinstance(c, Claimed)
    assert (c.event_id, c.action, c.attempt, c.tries) == (rec.event_id, "a", 1, 1)
    assert c.received_at == pytest.approx(time.time(), abs=60)
