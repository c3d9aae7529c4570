"""Each baseline of the optimisation catalogue gives the same answers as its optimised twin."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollamamax.scheduler import RouteRequest, Scheduler
from ollamamax.scheduler.baselines import (
    ListHistory,
    RecomputingIntelligent,
    history_rows,
    moved_history,
)
from ollamamax.scheduler.constraints import indexed_label_mask, nested_label_mask
from ollamamax.scheduler.history import TaskHistory
from ollamamax.scheduler.ordering import HeapOrder, SortedListOrder
from ollamamax.scheduler.queue import AdmissionQueue, Waiting
from ollamamax.scheduler.router import Dispatch, Router
from ollamamax.scheduler.stats import TwoPassStats, WelfordStats
from ollamamax.scheduler.strategies.intelligent import Intelligent
from ollamamax.testing.views import NodeSpec, build_view

# -- queue ordering ------------------------------------------------------------------------

# a script: ("push", tag) | ("pop",) | ("cancel", k-th pushed item)
ops = st.lists(st.one_of(
    st.tuples(st.just("push"), st.integers(0, 20).map(float)),
    st.tuples(st.just("pop")),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
), max_size=80)


def replay(order_cls, script) -> list[int]:
    order, pushed, popped = order_cls(), [], []
    for step in script:
        if step[0] == "push":
            item = Waiting(step[1], len(pushed), None)
            pushed.append(item)
            order.push(item)
        elif step[0] == "pop":
            item = order.first()
            if item is not None:
                order.pop()
                item.gone = True
                popped.append(item.seq)
        elif step[1] < len(pushed):
            pushed[step[1]].gone = True
    while (item := order.first()) is not None:
        order.pop()
        item.gone = True
        popped.append(item.seq)
    return popped


@given(ops)
def test_sorted_list_pops_exactly_what_the_heap_pops(script):
    assert replay(SortedListOrder, script) == replay(HeapOrder, script)


@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["a", "b", ""]),
                          st.floats(0, 50)), max_size=40))
def test_admission_queues_with_either_order_serve_the_same_sequence(arrivals):
    queues = [AdmissionQueue(order="heap"), AdmissionQueue(order="sorted_list")]
    for priority, key, now in sorted(arrivals, key=lambda a: a[2]):
        for q in queues:
            q.push(RouteRequest("m:1", key=key, priority=priority), 0, now)
    assert [w.seq for w in queues[0].head(0, 3)] == [w.seq for w in queues[1].head(0, 3)]
    queues[0].set_order("sorted_list")  # a switch while requests wait keeps the order
    queues[1].set_order("heap")
    served = [[q.pop(0, 100.0).seq for _ in range(len(arrivals))] for q in queues]
    assert served[0] == served[1]
    assert all(q.pop(0, 100.0) is None for q in queues)


def test_an_unknown_order_is_a_config_error_listing_the_names():
    from ollamamax.errors import ConfigError

    with pytest.raises(ConfigError, match="heap, sorted_list"):
        AdmissionQueue(order="bubble")


# -- task history --------------------------------------------------------------------------

rows = st.lists(st.fixed_dictionaries({
    "time": st.floats(0, 100), "node": st.integers(0, 3), "model": st.integers(0, 2),
    "prompt_tokens": st.integers(0, 5000), "ttft": st.floats(0, 10), "duration": st.floats(0, 60),
    "outcome": st.sampled_from(["ok", "ok", "error", "cancelled"])}), max_size=60)
filters = st.fixed_dictionaries({}, optional={
    "node": st.integers(0, 3), "model": st.integers(0, 2), "since": st.floats(0, 100),
    "outcome": st.sampled_from([None, "ok", "error"])})


@given(rows, filters, st.integers(1, 40))
def test_list_history_answers_as_the_ring_buffer(records, where, capacity):
    ring, plain = TaskHistory(capacity), ListHistory(capacity)
    for r in records:
        ring.append(**r)
        plain.append(**r)
    assert len(ring) == len(plain)
    for column in ("ttft", "node", "prompt_tokens"):
        assert sorted(ring.select(column, **where).tolist()) == \
            sorted(plain.select(column, **where).tolist())
    expected, got = ring.percentiles("ttft", (0, 50, 95, 99, 100), **where), \
        plain.percentiles("ttft", (0, 50, 95, 99, 100), **where)
    assert (expected is None) == (got is None)
    if expected is not None:
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


@given(rows, st.integers(1, 40))
def test_histories_move_into_each_other_row_for_row(records, capacity):
    ring = TaskHistory(capacity)
    for r in records:
        ring.append(**r)
    moved = moved_history(ring, "list")
    back = moved_history(moved, "ring")
    assert isinstance(moved, ListHistory) and isinstance(back, TaskHistory)
    assert moved.total == back.total == ring.total
    assert list(history_rows(moved)) == list(history_rows(ring)) == list(history_rows(back))


# -- constraint checking -------------------------------------------------------------------

LABELS = ["gpu=a100", "gpu=t4", "zone=1", "zone=2", "fast"]
label_sets = st.frozensets(st.sampled_from(LABELS), max_size=3)


@given(st.lists(label_sets, max_size=12), label_sets, label_sets | st.just(frozenset({"nope"})))
def test_nested_loop_filter_equals_the_label_index(nodes, require, exclude):
    view = build_view([NodeSpec(models=("m:1",), labels=tuple(s)) for s in nodes])
    expected = indexed_label_mask(view, require, exclude)
    got = nested_label_mask(view, require, exclude)
    if expected is None:
        assert got is None
    else:
        assert got.tolist() == expected.tolist()


# -- weights -------------------------------------------------------------------------------

nodes = st.lists(st.builds(
    lambda slots, busy, reported, queue, disk, healthy, speed: NodeSpec(
        models=("b:7b",) if disk else (), loaded={"m:7b": slots} if slots else {},
        busy={"m:7b": busy}, reported_busy={"m:7b": reported} if slots else {}, queue=queue,
        healthy=healthy, speed=speed, labels=("even",) if busy % 2 == 0 else ()),
    st.integers(0, 4), st.integers(0, 6), st.integers(0, 3), st.integers(0, 3), st.booleans(),
    st.booleans(), st.sampled_from([0.5, 1.0, 2.0])), min_size=1, max_size=8)
requests = st.lists(st.builds(
    lambda model, tokens, prefix, even: RouteRequest(
        model, prompt_tokens=tokens, prefix=prefix,
        require=frozenset({"even"}) if even else frozenset()),
    st.sampled_from(["m:7b", "b:7b"]), st.integers(0, 4096),
    st.sampled_from([(), (1, 2, 3), (1, 2, 9)]), st.booleans()), min_size=1, max_size=8)


def _routers(specs):
    """The same cluster twice, one routed with cached weights, one recomputing them."""
    out = []
    for impl in (Intelligent, RecomputingIntelligent):
        view = build_view(specs, capacity=2, sizes={"m:7b": 4 << 30, "b:7b": 1 << 30})
        view.prefixes.record(0, (1, 2, 3))
        out.append(Router(Scheduler(impl()), view))
    return out


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(nodes, requests)
def test_recomputed_weights_choose_what_cached_weights_choose(specs, reqs):
    """Same node, same wait, same fallbacks, request after request, with outcomes between
    (which change the views the cached weights follow by events)."""
    routers = _routers(specs)
    for now, request in enumerate(reqs):
        answers = []
        for router in routers:
            try:
                out = router.arrive(request, float(now))
            except Exception as exc:  # noqa: BLE001 - both must fail alike
                answers.append(type(exc).__name__)
                continue
            assert isinstance(out, Dispatch)
            d = out.decision
            answers.append((d.node, d.wait, d.ordered()))
            if now % 2:
                router.finished(d.node, out.model, float(now), ok=now % 3 != 0, ttft=0.1 * now,
                                duration=1.0, prompt_tokens=request.prompt_tokens)
        assert answers[0] == answers[1]


def test_recomputing_weights_keeps_no_view_listener():
    view = build_view([NodeSpec(loaded={"m:7b": 1})])
    Scheduler(RecomputingIntelligent()).bind(view)
    assert view.listeners == []


# -- variance ------------------------------------------------------------------------------


@given(st.lists(st.floats(-1e6, 1e6), max_size=200))
def test_welford_equals_two_passes(values):
    one, two = WelfordStats(), TwoPassStats()
    for x in values:
        one.add(x)
        two.add(x)
        assert one.count == two.count
    assert one.mean == pytest.approx(two.mean, rel=1e-9, abs=1e-6)
    assert one.variance == pytest.approx(two.variance, rel=1e-7, abs=1e-6)
    if len(values) > 1:
        assert one.variance == pytest.approx(float(np.var(values, ddof=1)), rel=1e-7, abs=1e-6)
