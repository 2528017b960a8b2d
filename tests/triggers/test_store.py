"""The event store (stratolab/triggers/store.py) on a real SQLite file and a real PostgreSQL database:
duplicates within and across batches, scopes, outcomes in batches, what a done event keeps, redrive,
pruning and counts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from store_support import empty, item, make_trigger, postgres_store, sqlite_store

from stratolab.db.models import TriggerEvent, utcnow
from stratolab.triggers.events import new_event
from stratolab.triggers.spec import Destination
from stratolab.triggers.store import (
    DEAD,
    DONE,
    PENDING,
    EventStore,
    GroupCommit,
    NewEvent,
    Outcome,
    StoreThread,
    async_scope,
    dedup_key,
    trigger_scope,
)


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EventStore]:
    with sqlite_store(Path(tmp_path_factory.mktemp("store"))) as store:
        yield store


@pytest.fixture(scope="module")
def postgres_db() -> Iterator[EventStore]:
    with postgres_store() as store:
        yield store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> EventStore:
    return empty(request.getfixturevalue(f"{request.param}_db"))


def states(store: EventStore, owner: str = "alice") -> dict[str, str]:
    return {e.ce_id: e.state for e in store.events(owner, limit=1000)}


# --- adding events ----------------------------------------------------------------------------------


def test_new_events_are_stored_pending_with_every_attribute(store):
    t = make_trigger(store)
    event = new_event("/sensors", "reading", b"\x00\x01", datacontenttype="application/octet-stream",
                      subject="room-1", id="e-1", key="room-1", traceparent="00-ab")
    [(event_id, duplicate)] = store.add([NewEvent(trigger_scope(t), "alice", "resize", event, trigger_id=t)])
    assert not duplicate
    [delivery] = store.pending(trigger_scope(t), 0, 10)
    assert delivery.id == event_id and delivery.attempts == 0 and delivery.trigger_id == t
    assert delivery.event == event
    assert delivery.event.key == "room-1"
    row = store.event(event_id)
    assert (row.state, row.owner, row.function, row.key, row.subject) == (PENDING, "alice", "resize", "room-1", "room-1")
    assert row.received_at.tzinfo is not None


def test_a_duplicate_within_one_batch_is_stored_once_and_answers_the_first_ones_id(store):
    t = make_trigger(store)
    result = store.add([item(t, "a"), item(t, "b"), item(t, "a"), item(t, "a")])
    (a, a_dup), (b, b_dup), (a2, a2_dup), (a3, a3_dup) = result
    assert (a_dup, b_dup, a2_dup, a3_dup) == (False, False, True, True)
    assert a2 == a3 == a != b
    assert len(store.pending(trigger_scope(t), 0, 10)) == 2


def test_a_duplicate_across_batches_answers_the_stored_id_even_after_the_event_is_done(store):
    t = make_trigger(store)
    [(first, _)] = store.add([item(t, "a")])
    assert store.add([item(t, "a"), item(t, "c")])[0] == (first, True)
    store.record([Outcome(first, DONE, 1)])
    assert store.add([item(t, "a", data=b"other data")]) == [(first, True)]
    assert store.event(first).state == DONE


def test_the_same_id_from_another_source_is_another_event(store):
    t = make_trigger(store)
    [(a, _), (b, dup)] = store.add([item(t, "1", source="/one"), item(t, "1", source="/two")])
    assert a != b and not dup


def test_scopes_keep_duplicates_apart(store):
    t1, t2 = make_trigger(store), make_trigger(store)
    [(a, _)] = store.add([item(t1, "same")])
    [(b, dup)] = store.add([item(t2, "same")])
    [(c, dup_async)] = store.add([NewEvent(async_scope("alice", "resize"), "alice", "resize",
                                           new_event("/test", "test", id="same"))])
    assert len({a, b, c}) == 3 and not dup and not dup_async
    assert dedup_key("trigger:1", "/s", "x") != dedup_key("trigger:2", "/s", "x")


def test_an_empty_batch_adds_nothing(store):
    assert store.add([]) == []


def test_a_large_batch_keeps_its_order(store):
    t = make_trigger(store)
    items = [item(t, f"e{n}") for n in range(2500)]
    ids = [i for i, _ in store.add(items)]
    assert ids == sorted(ids) and len(set(ids)) == 2500
    assert [d.event.id for d in store.pending(trigger_scope(t), 0, 3000)] == [f"e{n}" for n in range(2500)]


def test_pending_pages_oldest_first_and_only_its_scope(store):
    t1, t2 = make_trigger(store), make_trigger(store)
    ids = [i for i, _ in store.add([item(t1, f"e{n}") for n in range(7)])]
    store.add([item(t2, "other")])
    first = store.pending(trigger_scope(t1), 0, 3)
    assert [d.id for d in first] == ids[:3]
    rest = store.pending(trigger_scope(t1), first[-1].id, 100)
    assert [d.id for d in rest] == ids[3:]
    assert set(store.scopes_with_pending()) == {trigger_scope(t1), trigger_scope(t2)}


def test_an_events_destination_is_kept(store):
    dest = Destination("function", "store", "always")
    [(i, _)] = store.add([NewEvent(async_scope("alice", "f"), "alice", "f", new_event("/s", "t"), destination=dest)])
    [d] = store.pending(async_scope("alice", "f"), 0, 10)
    assert d.id == i and d.destination == dest and d.trigger_id is None


def test_group_commit_batches_concurrent_adds_and_answers_each_caller_its_own(store):
    t = make_trigger(store)

    async def main() -> list[list[tuple[int, bool]]]:
        run = StoreThread(store)
        group = GroupCommit(run, max_batch=5)
        try:
            return await asyncio.gather(*(group.add([item(t, f"e{n}"), item(t, f"e{n}")]) for n in range(12)))
        finally:
            run.close()

    answers = asyncio.run(main())
    assert all(a[0][0] == a[1][0] and not a[0][1] and a[1][1] for a in answers)
    assert len({a[0][0] for a in answers}) == 12


# --- outcomes ---------------------------------------------------------------------------------------


def test_record_writes_a_batch_of_outcomes_in_one_go(store):
    t = make_trigger(store)
    ids = [i for i, _ in store.add([item(t, f"e{n}") for n in range(4)])]
    later = utcnow() + timedelta(seconds=30)
    store.record([
        Outcome(ids[0], DONE, 1),
        Outcome(ids[1], PENDING, 1, error="500: boom", next_attempt_at=later),
        Outcome(ids[2], DEAD, 4, error="failed 4 times", result_status=500),
    ])
    store.record([])
    rows = {i: store.event(i) for i in ids}
    assert rows[ids[0]].state == DONE and rows[ids[0]].finished_at is not None
    assert rows[ids[1]].state == PENDING and rows[ids[1]].error == "500: boom"
    assert rows[ids[1]].finished_at is None and abs((rows[ids[1]].next_attempt_at - later).total_seconds()) < 1
    assert rows[ids[2]].state == DEAD and rows[ids[2]].attempts == 4 and rows[ids[2]].result_status == 500
    assert rows[ids[3]].state == PENDING and rows[ids[3]].attempts == 0
    assert [d.id for d in store.pending(trigger_scope(t), 0, 10)] == [ids[1], ids[3]]


def test_a_done_event_loses_its_data_unless_a_result_is_kept(store):
    t = make_trigger(store)
    [(plain, _), (kept, _), (dead, _)] = store.add([item(t, "a"), item(t, "b"), item(t, "c")])
    store.record([Outcome(plain, DONE, 1, result_status=200),
                  Outcome(kept, DONE, 1, result_status=200, result_content_type="application/json", result=b'{"ok":1}'),
                  Outcome(dead, DEAD, 1, error="400: bad")])
    assert store.event(plain).data is None
    row = store.event(kept)
    assert (row.data, row.result, row.result_content_type) == (b'{"n": 1}', b'{"ok":1}', "application/json")
    assert store.event(dead).data == b'{"n": 1}'  # dead events keep theirs, to be redriven


def test_outcomes_of_one_event_in_one_batch_are_written_in_their_order(store):
    """Plain successes are written together (one UPDATE per tries and status), after the rest: an event's
    retry and then its success in one batch ends done, its tries and status as the success says."""
    t = make_trigger(store)
    ids = [i for i, _ in store.add([item(t, f"o{n}") for n in range(1003)])]
    later = utcnow() + timedelta(seconds=30)
    store.record([Outcome(ids[0], PENDING, 1, error="500: boom", next_attempt_at=later),
                  *[Outcome(i, DONE, 1, result_status=200) for i in ids[2:]],
                  Outcome(ids[0], DONE, 2, result_status=201),
                  Outcome(ids[1], DONE, 1, result_status=200),
                  Outcome(ids[1], PENDING, 2, error="a repeated delivery failed", next_attempt_at=later)])
    first, second = store.event(ids[0]), store.event(ids[1])
    assert (first.state, first.attempts, first.result_status, first.error, first.next_attempt_at) == (
        DONE, 2, 201, None, None)
    assert first.data is None and first.finished_at is not None
    assert (second.state, second.attempts) == (PENDING, 2)  # the last word, as written in order
    assert {store.event(i).state for i in ids[2:]} == {DONE}  # beyond one IN list of 500
    assert store.event(ids[-1]).data is None


# --- redrive ----------------------------------------------------------------------------------------


def dead_events(store: EventStore) -> tuple[int, int, dict[str, int]]:
    t1 = make_trigger(store, function="resize")
    t2 = make_trigger(store, function="thumb")
    ids = dict(zip(["r1", "r2", "t1", "live"],
                   [i for i, _ in store.add([item(t1, "r1"), item(t1, "r2"),
                                              item(t2, "t1", function="thumb"), item(t1, "live")])], strict=True))
    store.record([Outcome(ids[n], DEAD, 4, error="boom", next_attempt_at=utcnow()) for n in ("r1", "r2", "t1")])
    return t1, t2, ids


def test_redrive_by_ids_resets_tries_and_errors(store):
    _, _, ids = dead_events(store)
    before = store.event(ids["r1"]).received_at
    [d] = store.redrive("alice", ids=[ids["r1"], ids["live"], 10**9])
    assert d.id == ids["r1"] and d.attempts == 0 and d.event.id == "r1"
    row = store.event(ids["r1"])
    assert (row.state, row.attempts, row.error, row.finished_at, row.next_attempt_at) == (PENDING, 0, None, None, None)
    assert row.received_at >= before  # a fresh max age
    assert states(store) == {"r1": PENDING, "r2": DEAD, "t1": DEAD, "live": PENDING}


def test_redrive_by_function_and_all(store):
    _, _, ids = dead_events(store)
    assert [d.event.id for d in store.redrive("alice", function="thumb")] == ["t1"]
    assert states(store)["r1"] == DEAD
    assert [d.event.id for d in store.redrive("alice")] == ["r1", "r2"]
    assert set(states(store).values()) == {PENDING}
    assert store.redrive("alice") == []


def test_redrive_touches_only_the_owners_events(store):
    _, _, ids = dead_events(store)
    assert store.redrive("mallory", ids=[ids["r1"]]) == []
    assert store.redrive("mallory") == []
    assert store.event(ids["r1"]).state == DEAD


# --- listing, counts, pruning, deleting -------------------------------------------------------------


def test_events_list_newest_first_filtered_by_trigger_function_and_state(store):
    t1, t2, ids = dead_events(store)
    assert [e.ce_id for e in store.events("alice")] == ["live", "t1", "r2", "r1"]
    assert [e.ce_id for e in store.events("alice", trigger_id=t1, state=DEAD)] == ["r2", "r1"]
    assert [e.ce_id for e in store.events("alice", function="thumb")] == ["t1"]
    assert [e.ce_id for e in store.events("alice", limit=1)] == ["live"]
    assert store.events("bob") == []


def test_counts_per_trigger_and_state(store):
    t1, t2, ids = dead_events(store)
    t3 = make_trigger(store)
    assert store.counts([t1, t2, t3]) == {
        t1: {PENDING: 1, DONE: 0, DEAD: 2}, t2: {PENDING: 0, DONE: 0, DEAD: 1}, t3: {PENDING: 0, DONE: 0, DEAD: 0}}
    assert store.counts([]) == {}


def test_prune_forgets_done_and_dead_events_by_age(store):
    t = make_trigger(store)
    ids = [i for i, _ in store.add([item(t, f"e{n}") for n in range(5)])]
    store.record([Outcome(ids[0], DONE, 1), Outcome(ids[1], DONE, 1), Outcome(ids[2], DEAD, 1), Outcome(ids[3], DEAD, 1)])
    old = utcnow() - timedelta(hours=2)
    with store.sessions.begin() as s:
        s.execute(sa.update(TriggerEvent).where(TriggerEvent.id.in_([ids[0], ids[2]])).values(finished_at=old))
    assert store.prune(keep_done=timedelta(hours=3), keep_dead=timedelta(hours=3)) == 0
    assert store.prune(keep_done=timedelta(hours=1), keep_dead=timedelta(days=7)) == 1
    assert store.event(ids[0]) is None and store.event(ids[2]) is not None
    assert store.prune(keep_done=timedelta(hours=1), keep_dead=timedelta(hours=1)) == 1
    assert store.event(ids[2]) is None
    assert {store.event(i).state for i in ids[3:]} == {DEAD, PENDING}  # recent dead and pending stay
    # a pruned duplicate is a new event again
    [(again, dup)] = store.add([item(t, "e0")])
    assert not dup and again not in ids


def test_deleting_a_trigger_deletes_its_events(store):
    t1, t2, ids = dead_events(store)
    store.delete_trigger(t1)
    assert store.trigger(t1) is None
    assert set(states(store)) == {"t1"}


def test_triggers_are_listed_by_owner_and_function(store):
    a = make_trigger(store, "alice", "resize")
    b = make_trigger(store, "alice", "thumb")
    c = make_trigger(store, "bob", "resize")
    assert [t.id for t in store.triggers()] == [a, b, c]
    assert [t.id for t in store.triggers("alice")] == [a, b]
    assert [t.id for t in store.triggers("alice", "thumb")] == [b]
    name = store.trigger(a).name
    assert store.name_taken("alice", name) and not store.name_taken("bob", name)


# --- bounds the codec allows must fit the columns ---------------------------------------------------


def test_the_longest_attributes_the_codec_accepts_can_be_stored(store):
    """Whatever from_http accepts must be storable: one event that does not fit fails the whole group
    commit, other users' events with it."""
    from stratolab.triggers.events import MAX_ATTRIBUTE, MAX_CONTENT_TYPE, STRUCTURED, from_http

    body = {"specversion": "1.0", "id": "i" * MAX_ATTRIBUTE, "source": "s" * MAX_ATTRIBUTE,
            "type": "t" * MAX_ATTRIBUTE, "subject": "u" * MAX_ATTRIBUTE, "partitionkey": "k" * MAX_ATTRIBUTE,
            "datacontenttype": "text/" + "p" * (MAX_CONTENT_TYPE - 5), "data": "hello"}
    [event] = from_http({"Content-Type": STRUCTURED}, json.dumps(body).encode())
    t = make_trigger(store)
    [(i, _)] = store.add([NewEvent(trigger_scope(t), "alice", "resize", event, trigger_id=t)])
    [d] = store.pending(trigger_scope(t), 0, 10)
    assert d.id == i and d.event == event
