"""Ollama's rules for slots, queueing, eviction and keep-alive, in virtual time."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollamamax.errors import EngineOverloaded
from ollamamax.node.residency import Load, Residency, Start, Ticket, Unload


def starts(actions):
    return [a.ticket for a in actions if isinstance(a, Start)]


def kinds(actions):
    return [type(a).__name__ for a in actions]


def test_cold_request_loads_then_starts():
    r = Residency()
    t = Ticket("a")
    assert r.submit(t, 0) == [Load("a")]
    assert r.loaded("a", 1) == [Start(t)]
    assert r.runners["a"].busy == 1


def test_slots_limit_concurrency_and_free_slot_starts_next():
    r = Residency(num_parallel=2)
    t1, t2, t3 = Ticket("a"), Ticket("a"), Ticket("a")
    r.submit(t1, 0)
    r.submit(t2, 0)
    assert starts(r.loaded("a", 1)) == [t1, t2]
    assert r.submit(t3, 2) == []
    assert r.queue_depth == 1
    assert starts(r.finish(t1, 3)) == [t3]


def test_queue_limit_refuses_with_overloaded():
    r = Residency(max_queue=1)
    r.submit(Ticket("a"), 0)  # waits for the load
    with pytest.raises(EngineOverloaded):
        r.submit(Ticket("a"), 0)


def test_keep_alive_expiry_unloads_idle_model():
    r = Residency()
    t = Ticket("a", keep_alive=10)
    r.submit(t, 0)
    r.loaded("a", 0)
    r.finish(t, 5)
    assert r.next_expiry() == 15
    assert r.expire(14) == []
    assert r.expire(15) == [Unload("a", "keep-alive expired")]
    assert "a" not in r.runners


def test_model_never_expires_while_serving():
    r = Residency()
    t1, t2 = Ticket("a", keep_alive=1), Ticket("a", keep_alive=1)
    r.submit(t1, 0)
    r.loaded("a", 0)
    r.finish(t1, 1)
    r.submit(t2, 1.5)
    assert r.next_expiry() is None
    assert r.expire(100) == []


def test_keep_alive_zero_unloads_after_last_request():
    r = Residency()
    t = Ticket("a", keep_alive=0)
    r.submit(t, 0)
    r.loaded("a", 0)
    assert r.finish(t, 1) == [Unload("a", "keep_alive 0")]


def test_negative_keep_alive_is_forever():
    r = Residency()
    t = Ticket("a", keep_alive=math.inf)
    r.submit(t, 0)
    r.loaded("a", 0)
    r.finish(t, 1)
    assert r.next_expiry() is None


def test_full_node_evicts_idle_model_expiring_soonest():
    r = Residency(max_loaded=2)
    for model, ka in (("a", 100), ("b", 10)):
        t = Ticket(model, keep_alive=ka)
        r.submit(t, 0)
        r.loaded(model, 0)
        r.finish(t, 1)
    actions = r.submit(Ticket("c"), 2)
    assert kinds(actions) == ["Unload", "Load"]
    assert actions[0].model == "b"


def test_load_waits_when_every_model_is_busy_then_proceeds():
    r = Residency(max_loaded=1)
    ta, tb = Ticket("a"), Ticket("b")
    r.submit(ta, 0)
    r.loaded("a", 0)
    assert r.submit(tb, 1) == []  # a is busy: b waits
    actions = r.finish(ta, 2)
    assert kinds(actions) == ["Unload", "Load"]
    assert starts(r.loaded("b", 3)) == [tb]


def test_waiting_load_does_not_block_a_loaded_model():
    r = Residency(max_loaded=1, num_parallel=2)
    ta1, tb, ta2 = Ticket("a"), Ticket("b"), Ticket("a")
    r.submit(ta1, 0)
    r.loaded("a", 0)
    r.submit(tb, 1)  # must wait: a is busy and the node is full
    assert starts(r.submit(ta2, 2)) == [ta2]


def test_cancel_removes_a_waiting_ticket():
    r = Residency()
    t = Ticket("a")
    r.submit(t, 0)
    r.cancel(t, 0)
    assert r.queue_depth == 0


def test_failed_load_returns_its_waiters():
    r = Residency()
    t1, t2 = Ticket("a"), Ticket("a")
    r.submit(t1, 0)
    r.submit(t2, 0)
    failed, actions = r.load_failed("a", 1)
    assert failed == [t1, t2]
    assert actions == []
    assert "a" not in r.runners


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.booleans()), min_size=1, max_size=60),
       st.integers(1, 3), st.integers(1, 3))
def test_invariants_hold_under_any_sequence(events, parallel, max_loaded):
    """Never more busy than slots, never more resident than allowed, nothing lost."""
    r = Residency(num_parallel=parallel, max_loaded=max_loaded, max_queue=1000)
    running, submitted, done = [], 0, 0
    now = 0.0

    def apply(actions):
        for a in actions:
            if isinstance(a, Start):
                running.append(a.ticket)
            elif isinstance(a, Load):
                apply(r.loaded(a.model, now))

    for model, finish_one in events:
        now += 1
        if finish_one and running:
            done += 1
            apply(r.finish(running.pop(0), now))
        else:
            submitted += 1
            apply(r.submit(Ticket(model, keep_alive=5), now))
        apply(r.expire(now))
        assert len(r.runners) <= max_loaded
        assert all(x.busy <= x.slots for x in r.runners.values())
        assert submitted == done + len(running) + r.queue_depth
    while running:
        now += 1
        done += 1
        apply(r.finish(running.pop(0), now))
    assert r.queue_depth == 0 and submitted == done
