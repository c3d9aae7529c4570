"""What `intelligent` must do: avoid cold loads, follow prefixes, respect slots, fit memory."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollamamax.scheduler import ClusterView, LoadedModel, RouteRequest, Scheduler
from ollamamax.scheduler.strategies.intelligent import Intelligent
from ollamamax.testing.views import NodeSpec, build_view

M = "m:7b"
GB = 1_000_000_000


def cluster(n: int, *, loaded=(), slots=1, busy=None, size=4 * GB, mem_total=0) -> ClusterView:
    view = ClusterView()
    for k in range(n):
        i = view.add(f"n{k}", f"http://n{k}", mem_total=mem_total)
        view.set_health(i, True, 0)
        resident = [LoadedModel(M, slots=slots, busy=(busy or {}).get(k, 0), size=size)] \
            if k in loaded else []
        view.update(i, models=[(M, size)], loaded=resident)
    return view


def decide(view, scheduler=None, **request):
    scheduler = scheduler or Scheduler("intelligent")
    return scheduler.decide(RouteRequest(M, **request), view, 0)


def test_avoids_a_cold_load():
    view = cluster(3, loaded={2})
    d = decide(view, prompt_tokens=100)
    assert d.node == 2 and not d.wait and d.reason == "loaded"


def test_follows_the_prefix_among_equal_nodes():
    view = cluster(3, loaded={0, 1, 2}, slots=4)
    prefix = tuple(range(1, 33))
    view.prefixes.record(1, prefix)
    d = decide(view, prompt_tokens=2048, prefix=prefix)
    assert d.node == 1 and d.reason.startswith("prefix cached")


def test_a_full_node_loses_a_short_prompt_but_keeps_a_long_one():
    view = cluster(2, loaded={0, 1}, slots=1, busy={0: 1})
    prefix = tuple(range(1, 9))
    view.prefixes.record(0, prefix)
    # 100 tokens of prefill saved (25 ms) is not worth waiting a whole request (2 s) for ...
    assert decide(view, prompt_tokens=100, prefix=prefix).node == 1
    # ... 20,000 tokens (5 s) is: the request waits for node 0's slot.
    d = decide(view, prompt_tokens=20_000, prefix=prefix)
    assert d.node == 0 and d.wait


def test_waits_when_every_slot_is_busy():
    view = cluster(2, loaded={0, 1}, slots=2, busy={0: 2, 1: 2})
    assert decide(view, prompt_tokens=10).wait


def test_spreads_over_free_slots():
    view = cluster(3, loaded={0, 1, 2}, slots=2)
    scheduler = Scheduler("intelligent")
    m = view.model_id(M)
    chosen = []
    for _ in range(6):
        d = decide(view, scheduler, prompt_tokens=50)
        chosen.append(d.node)
        view.started(d.node, m)
    assert sorted(chosen) == [0, 0, 1, 1, 2, 2]


def test_a_model_too_big_for_a_node_goes_elsewhere():
    view = ClusterView()
    for k, total in enumerate((2 * GB, 64 * GB)):
        i = view.add(f"n{k}", mem_total=total)
        view.set_health(i, True, 0)
        view.update(i, models=[(M, 8 * GB)], mem_free=total)
    assert decide(view, prompt_tokens=10).node == 1


def test_learned_speed_wins_long_prompts():
    view = cluster(2, loaded={0, 1}, slots=4)
    m = view.model_id(M)
    for node, tps in ((0, 500.0), (1, 5000.0)):
        view.profiles.record(node, m, ok=True, ttft=0.05, prompt_tokens=1000,
                             prefill_s=1000 / tps)
        view.started(node, m)
        view.finished(node, m, ok=True)  # tells the strategy to re-read the profile
    assert decide(view, prompt_tokens=8000).node == 1


def test_fallbacks_rank_the_rest_from_the_same_snapshot():
    view = cluster(4, loaded={1, 3})
    d = decide(view, prompt_tokens=10)
    assert d.node in (1, 3)
    assert set(d.fallbacks()) == {0, 1, 2, 3} - {d.node}
    assert d.fallbacks()[0] in (1, 3)  # the other loaded node before the cold ones


EVENTS = st.lists(st.tuples(st.sampled_from(["start", "finish", "health", "telemetry", "drain"]),
                            st.integers(0, 5), st.integers(0, 2)), max_size=60)


@settings(max_examples=80, deadline=None)
@given(EVENTS)
def test_incremental_arrays_match_a_fresh_computation(events):
    """Whatever happens, the arrays kept current by listeners equal ones built from scratch."""
    view = ClusterView(capacity=2)  # small, so growth happens too
    live = Intelligent()
    live.bind(view)
    models = ["a:1", "b:1", "c:1"]
    for kind, node, model in events:
        node_id = f"n{node}"
        if node_id not in view.index:
            i = view.add(node_id)
            view.set_health(i, True, 0)
        i = view.node(node_id)
        m = view.ensure_model(models[model], (model + 1) * GB)
        if kind == "start":
            view.started(i, m)
        elif kind == "finish":
            view.finished(i, m, ok=True)
        elif kind == "health":
            view.set_health(i, not view.healthy[i], 0)
        elif kind == "drain":
            view.set_draining(i, not view.draining[i])
        else:
            view.update(i, models=[(models[model], GB)],
                        loaded=[LoadedModel(models[model], slots=2, busy=node % 3)],
                        queue_depth=node)
    fresh = Intelligent()
    fresh.bind(view)
    n = view.n
    for m in range(len(view.model_names)):
        np.testing.assert_allclose(live.base[m][:n], fresh.base[m][:n])
        np.testing.assert_allclose(live.rate[m][:n], fresh.rate[m][:n])


def test_decide_does_not_mutate_the_view():
    view = cluster(5, loaded={1, 2}, slots=2, busy={1: 1})
    prefix = tuple(range(1, 10))
    view.prefixes.record(2, prefix)
    before = {name: [a.copy() for a in arrays] for name, arrays in view.cells.items()}
    flight = view.in_flight.copy()
    decide(view, prompt_tokens=500, prefix=prefix).fallbacks()
    for name, arrays in view.cells.items():
        for a, b in zip(arrays, before[name], strict=True):
            assert np.array_equal(a, b)
    assert np.array_equal(view.in_flight, flight)


@pytest.mark.parametrize("n", [1, 7])
def test_labels_restrict_the_choice(n):
    view = cluster(n + 1, loaded=set(range(n + 1)))
    view.add(f"n{n}", labels={"gpu=a100"})
    d = decide(view, prompt_tokens=10, require=frozenset({"gpu=a100"}))
    assert d.node == n
    d = decide(view, prompt_tokens=10, exclude=frozenset({"gpu=a100"}))
    assert d.node != n


def test_the_prefix_index_forgets_what_a_node_cannot_hold():
    """Telemetry bounds what the index believes a node holds: no routing after ghosts."""
    view = cluster(2, loaded={0, 1}, slots=4)
    old, new = tuple(range(100, 140)), tuple(range(200, 240))
    view.prefixes.record(0, old)
    view.prefixes.record(0, new)
    assert view.prefixes.matches(old) == {0: 40}
    view.update(0, models=[(M, 4 * GB)], loaded=[LoadedModel(M, slots=4)], prefix_blocks=40)
    assert view.prefixes.matches(old) == {}  # evicted: only the newest prompt fits
    assert view.prefixes.matches(new) == {0: 40}


def test_a_cold_load_evicts_where_the_idle_model_is_least_wanted():
    """Both nodes are full, each with one idle model: the load goes where the idle model has
    been asked for least lately, since its reload is the likelier to be needed."""
    def place(popular: str) -> int:
        busy = {"b:1": 1, "c:1": 1, "e:1": 1, "f:1": 1}
        view = build_view([
            NodeSpec(models=("new:1",), loaded={"a:1": 1, "b:1": 1, "c:1": 1}, reported_busy=busy),
            NodeSpec(models=("new:1",), loaded={"d:1": 1, "e:1": 1, "f:1": 1}, reported_busy=busy),
        ], sizes={m: 4 * GB for m in ("a:1", "b:1", "c:1", "d:1", "e:1", "f:1", "new:1")})
        scheduler = Scheduler("intelligent")
        for k in range(20):  # the popular idle model has been asked for lately
            scheduler.decide(RouteRequest(popular), view, k * 0.1)
        for i in (0, 1):  # the next telemetry reports re-read the costs
            view.update(i, models=[("new:1", 4 * GB)], mem_free=GB,
                        loaded=[LoadedModel(m, slots=1, busy=busy.get(m, 0), size=4 * GB)
                                for m in view.model_names if view.loaded[view.model_id(m)][i]])
        d = scheduler.decide(RouteRequest("new:1", prompt_tokens=100), view, 2.0)
        assert d.reason == "cold load"
        return d.node

    assert place("a:1") == 1
    assert place("d:1") == 0


def test_a_request_without_the_prefix_leaves_the_last_free_slot_to_one_with_it():
    # half the slots busy on both (the same slowdown), but node 0 would be full after it
    view = build_view([NodeSpec(loaded={M: 2}, busy={M: 1}), NodeSpec(loaded={M: 4}, busy={M: 2})])
    assert decide(view, prompt_tokens=100).node == 1
