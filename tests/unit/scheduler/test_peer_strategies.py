"""Each peer replica does what its source does (see each strategy module's docstring)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollamamax.scheduler import ClusterView, LoadedModel, RouteRequest, Scheduler
from ollamamax.scheduler.decide import Candidates
from ollamamax.scheduler.router import Router
from ollamamax.scheduler.strategies.consistent_hash_bounded import load_bound
from ollamamax.scheduler.strategies.litellm_latency import LiteLLMLatency
from ollamamax.scheduler.strategies.sollol import (
    Hosts,
    TaskContext,
    score_hosts,
    sollol_aliases,
    task_context,
)
from ollamamax.testing.views import NodeSpec, build_view

M = "m:7b"
OTHER = "x:1b"
GB = 2**30
MB = 2**20


def nodes(k: int, **spec) -> list[NodeSpec]:
    return [NodeSpec(**{"loaded": {M: 4}, **spec}) for _ in range(k)]


def decide(scheduler: Scheduler, view: ClusterView, **request):
    return scheduler.decide(RouteRequest(M, **request), view, 0.0)


def set_load(view: ClusterView, loads: dict[int, int]) -> None:
    m = view.model_index[M]
    for node, count in loads.items():
        for _ in range(count):
            view.started(node, m)


def record_latencies(view: ClusterView, node: int, values, model: str = M) -> None:
    m = view.model_index[model]
    for value in values:
        view.profiles.record(node, m, ok=True, ttft=value, latency=value)
    view.started(node, m)  # a cell change, as Router.finished makes after recording
    view.finished(node, m, ok=True)


# -- round robin ---------------------------------------------------------------------------


def test_round_robin_cycles_in_node_order_and_skips_unhealthy():
    view = build_view(nodes(3))
    s = Scheduler("round_robin")
    assert [decide(s, view).node for _ in range(5)] == [0, 1, 2, 0, 1]
    view.set_health(1, False, 0)
    s = Scheduler("round_robin")
    assert [decide(s, view).node for _ in range(4)] == [0, 2, 0, 2]  # SGLang's own test


def test_round_robin_fallbacks_continue_the_cycle():
    d = decide(Scheduler("round_robin"), build_view(nodes(4)))
    assert d.ordered() == (0, 1, 2, 3)


# -- random --------------------------------------------------------------------------------


def test_random_is_uniform_and_seeded():
    view = build_view(nodes(4))
    s = Scheduler("random", seed=11)
    counts = Counter(decide(s, view).node for _ in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert all(850 < c < 1150 for c in counts.values()), counts
    a, b = Scheduler("random", seed=11), Scheduler("random", seed=11)
    assert [decide(a, view).node for _ in range(50)] == [decide(b, view).node for _ in range(50)]


def test_random_fallbacks_do_not_change_later_decisions():
    view = build_view(nodes(5))
    a, b = Scheduler("random", seed=4), Scheduler("random", seed=4)
    seq_a = [decide(a, view) for _ in range(20)]
    for d in seq_a[::2]:
        d.fallbacks()  # asked for on some decisions only
    seq_b = [decide(b, view).node for _ in range(20)]
    assert [d.node for d in seq_a] == seq_b


# -- least busy (LiteLLM) ------------------------------------------------------------------


def test_least_busy_takes_the_fewest_in_flight_first_in_order_on_a_tie():
    view = build_view(nodes(4))
    set_load(view, {0: 3, 1: 1, 2: 1, 3: 2})
    for seed in range(5):
        d = decide(Scheduler("least_busy", seed=seed), view)
        assert d.node == 1  # not 2: LiteLLM keeps the first minimum in dict order
        assert d.fallbacks() == (2, 3, 0)


def test_least_busy_goes_random_when_the_least_busy_holder_is_down():
    """LiteLLM takes the minimum over every deployment it counted, healthy or not."""
    view = build_view(nodes(4))
    set_load(view, {1: 2, 2: 2, 3: 5})
    view.set_health(0, False, 0)  # node 0 is down with 0 in flight: the minimum
    chosen = Counter(decide(Scheduler("least_busy", seed=s), view).node for s in range(200))
    assert set(chosen) == {1, 2, 3}, "uniform among healthy ones, load ignored"
    assert chosen[3] > 30


# -- LiteLLM latency -----------------------------------------------------------------------


def test_litellm_latency_picks_the_lowest_mean_of_the_last_ten():
    view = build_view(nodes(3))
    record_latencies(view, 0, [0.30] * 10)
    record_latencies(view, 1, [9.0] + [0.20] * 10)  # the 9 s outlier fell out of the window
    record_latencies(view, 2, [0.10] * 9 + [5.0])  # mean 0.59
    for seed in range(5):
        d = decide(Scheduler("litellm_latency", seed=seed), view)
        assert d.node == 1
        assert d.fallbacks() == (0, 2)


def test_litellm_latency_tries_unmeasured_nodes_first():
    view = build_view(nodes(3))
    record_latencies(view, 0, [0.01])
    record_latencies(view, 2, [0.02])
    assert decide(Scheduler("litellm_latency"), view).node == 1  # LiteLLM's latency [0]


def test_litellm_latency_follows_new_measurements_through_the_router():
    view = build_view(nodes(2))
    scheduler = Scheduler("litellm_latency", seed=1)
    router = Router(scheduler, view)
    for node, ttft in ((0, 0.5), (1, 0.1)):
        router.finished(node, view.model_index[M], 0.0, ok=True, ttft=ttft)
    assert decide(scheduler, view).node == 1
    for _ in range(10):
        router.finished(1, view.model_index[M], 1.0, ok=True, ttft=2.0)
    assert decide(scheduler, view).node == 0


def test_litellm_latency_breaks_ties_at_random_and_honours_a_buffer():
    view = build_view(nodes(3))
    record_latencies(view, 0, [0.10])
    record_latencies(view, 1, [0.10])
    record_latencies(view, 2, [0.12])
    picks = {decide(Scheduler("litellm_latency", seed=s), view).node for s in range(40)}
    assert picks == {0, 1}
    picks = {Scheduler(LiteLLMLatency(seed=s, buffer=0.25)).decide(RouteRequest(M), view, 0).node
             for s in range(60)}
    assert picks == {0, 1, 2}  # 0.12 <= 0.10 + 0.25 x 0.10


# -- power of two choices ------------------------------------------------------------------


def test_p2c_never_picks_the_busier_of_its_two():
    view = build_view(nodes(2))
    set_load(view, {0: 5, 1: 1})
    assert {decide(Scheduler("p2c", seed=s), view).node for s in range(50)} == {1}


def test_p2c_busiest_never_wins_and_the_middle_one_sometimes_does():
    view = build_view(nodes(3))
    set_load(view, {0: 0, 1: 5, 2: 10})
    chosen = Counter()
    for seed in range(300):
        d = decide(Scheduler("p2c", seed=seed), view)
        chosen[d.node] += 1
        assert view.in_flight[d.node] <= view.in_flight[d.fallbacks()[0]]  # beat its partner
    assert chosen[2] == 0
    assert 50 < chosen[1] < 150  # paired with node 2: a third of the pairs


# -- consistent hashing with bounded loads ---------------------------------------------------


def keys(k: int) -> list[tuple[int, ...]]:
    return [(1000 + j, 7) for j in range(k)]


def test_consistent_hash_is_sticky_and_spreads_keys():
    view = build_view(nodes(8))
    s = Scheduler("consistent_hash_bounded")
    first = [decide(s, view, prefix=p).node for p in keys(200)]
    assert first == [decide(s, view, prefix=p).node for p in keys(200)]
    counts = Counter(first)
    assert len(counts) == 8 and max(counts.values()) < 60


def test_consistent_hash_moves_keys_only_to_a_node_that_joins():
    view = build_view(nodes(6))
    s = Scheduler("consistent_hash_bounded")
    before = [decide(s, view, prefix=p).node for p in keys(300)]
    i = view.add("newcomer")
    view.set_health(i, True, 0)
    view.update(i, models=[(M, 0)])
    after = [decide(s, view, prefix=p).node for p in keys(300)]
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert moved and all(b == i for _, b in moved)
    assert len(moved) < 300 * 2 / 7  # about 1/7 of the keys


def test_consistent_hash_keeps_a_down_node_on_the_ring():
    view = build_view(nodes(5))
    s = Scheduler("consistent_hash_bounded")
    owner = decide(s, view, prefix=(42,)).node
    view.set_health(owner, False, 0)
    assert decide(s, view, prefix=(42,)).node != owner
    view.set_health(owner, True, 1)
    assert decide(s, view, prefix=(42,)).node == owner


def test_consistent_hash_respects_the_load_bound():
    view = build_view(nodes(4))
    s = Scheduler("consistent_hash_bounded")
    owner = decide(s, view, prefix=(42,)).node
    set_load(view, {owner: 2})  # bound = ceil(1.25 x 3 / 4) = 1: the owner is full
    assert load_bound(2, 4) == 1
    d = decide(s, view, prefix=(42,))
    assert d.node != owner and view.in_flight[d.node] < 1
    assert owner in d.fallbacks()[-1:]  # over the bound: last


@settings(max_examples=60, deadline=None)
@given(loads=st.lists(st.integers(0, 30), min_size=1, max_size=10), key=st.integers(0, 10**6))
def test_consistent_hash_chosen_load_is_under_the_bound(loads, key):
    view = build_view(nodes(len(loads)))
    set_load(view, dict(enumerate(loads)))
    d = decide(Scheduler("consistent_hash_bounded"), view, prefix=(key,))
    bound = math.ceil(1.25 * (sum(loads) + 1) / len(loads))
    assert view.in_flight[d.node] < bound


def test_consistent_hash_without_a_prompt_hashes_the_model():
    view = build_view(nodes(6))
    s = Scheduler("consistent_hash_bounded")
    assert len({decide(s, view).node for _ in range(10)}) == 1


# -- SGLang cache aware --------------------------------------------------------------------

PROMPT = tuple(range(500, 510))  # 10 blocks


def test_sglang_goes_least_loaded_when_imbalanced():
    view = build_view(nodes(3))
    view.prefixes.record(0, PROMPT)
    set_load(view, {0: 100, 1: 40, 2: 30})  # 100 - 30 > 64 and 100 > 45
    d = decide(Scheduler("sglang_cache_aware"), view, prefix=PROMPT)
    assert d.node == 2 and d.reason.startswith("imbalanced")
    assert d.fallbacks() == (1, 0)


@pytest.mark.parametrize("loads", [{0: 94, 1: 30}, {0: 300, 1: 210}])
def test_sglang_follows_the_prefix_unless_both_thresholds_are_crossed(loads):
    """94 - 30 = 64 is not > 64; 300 > 1.5 x 210 fails: balanced, so the cache decides."""
    view = build_view(nodes(2))
    view.prefixes.record(0, PROMPT)
    set_load(view, loads)
    d = decide(Scheduler("sglang_cache_aware"), view, prefix=PROMPT)
    assert d.node == 0 and d.reason.startswith("prefix match")


def test_sglang_counts_a_down_workers_load_in_the_balance_check():
    view = build_view(nodes(3))
    set_load(view, {1: 70, 2: 66})
    view.set_health(0, False, 0)  # idle and down: min = 0, so 70 - 0 > 64
    view.prefixes.record(1, PROMPT)
    d = decide(Scheduler("sglang_cache_aware"), view, prefix=PROMPT)
    assert d.node == 2 and d.reason.startswith("imbalanced")


def test_sglang_match_rate_must_exceed_the_threshold():
    view = build_view(nodes(3))
    view.prefixes.record(0, PROMPT[:3])  # 3 of 10 blocks: 0.3 is not > 0.3
    view.prefixes.record(1, tuple(range(900, 905)))  # 5 blocks: a bigger tree
    d = decide(Scheduler("sglang_cache_aware"), view, prefix=PROMPT)
    assert d.node == 2 and d.reason == "smallest tree"
    view.prefixes.record(0, PROMPT[:4])  # 0.4
    d = decide(Scheduler("sglang_cache_aware"), view, prefix=PROMPT)
    assert d.node == 0 and d.reason == "prefix match 40%"


def test_sglang_smallest_tree_without_a_prompt():
    view = build_view(nodes(3))
    view.prefixes.record(0, tuple(range(10)))
    view.prefixes.record(1, tuple(range(20, 22)))
    view.prefixes.record(2, tuple(range(30, 35)))
    assert decide(Scheduler("sglang_cache_aware"), view).node == 1


def test_sglang_tree_sizes_follow_the_router():
    view = build_view(nodes(2))
    scheduler = Scheduler("sglang_cache_aware")
    router = Router(scheduler, view)
    first = router.arrive(RouteRequest(M, prefix=tuple(range(40))), 0.0).decision.node
    d = decide(scheduler, view, prefix=(777, 778))
    assert d.node == 1 - first and d.reason == "smallest tree"


def test_sglang_best_match_on_a_down_node_falls_back_to_the_first_healthy():
    view = build_view(nodes(4))
    view.prefixes.record(2, PROMPT)
    view.prefixes.record(0, tuple(range(60, 70)))  # node 0: the biggest tree, still first
    view.set_health(2, False, 0)
    d = decide(Scheduler("sglang_cache_aware"), view, prefix=PROMPT)
    assert d.node == 0 and "first healthy" in d.reason


def test_sglang_ties_follow_one_fixed_order_per_router():
    view = build_view(nodes(6))
    s = Scheduler("sglang_cache_aware", seed=3)
    assert len({decide(s, view).node for _ in range(20)}) == 1
    firsts = {decide(Scheduler("sglang_cache_aware", seed=k), view).node for k in range(30)}
    assert len(firsts) > 2  # the order differs between routers (a DashMap's random state)


# -- llm-d ---------------------------------------------------------------------------------


def llmd_view() -> ClusterView:
    view = build_view([
        NodeSpec(loaded={M: 4}, busy={M: 2}, queued={M: 3}),  # prefix 4/8, kv 0.5, queue 3
        NodeSpec(loaded={M: 4}, queue=9),  # prefix 0, kv 0, queue 0 (other models' queue)
        NodeSpec(loaded={M: 2}, busy={M: 1}, reported_busy={M: 1}, queued={M: 6}),  # 8/8, 1, 6
    ])
    prompt = tuple(range(300, 308))
    view.prefixes.record(0, prompt[:4])
    view.prefixes.record(2, prompt)
    return view


def test_llmd_picks_the_argmax_of_its_weighted_sum():
    view = llmd_view()
    scheduler = Scheduler("llmd_scorer")
    request = RouteRequest(M, prefix=tuple(range(300, 308)))
    # queue scores: (6 - q) / 6 -> 0.5, 1, 0
    expected = [3 * 0.5 + 2 * 0.5 + 2 * 0.5,  # 3.5
                3 * 0.0 + 2 * 1.0 + 2 * 1.0,  # 4.0
                3 * 1.0 + 2 * 0.0 + 2 * 0.0]  # 3.0
    scores = scheduler.strategy.scores(request, _candidates(view), view)
    assert scores.tolist() == pytest.approx(expected)
    d = scheduler.decide(request, view, 0.0)
    assert d.node == 1 and d.fallbacks() == (0, 2)


def test_llmd_prefix_wins_when_the_load_is_even():
    view = llmd_view()
    view.update(2, loaded=[LoadedModel(M, slots=8, busy=1)])  # our 1 running: no one else
    # node 2 now: prefix 1, kv 1/8, queue 0 -> 3 + 1.75 + 2 = 6.75
    assert decide(Scheduler("llmd_scorer"), view, prefix=tuple(range(300, 308))).node == 2


def test_llmd_counts_requests_beyond_slots_as_queued():
    view = build_view([NodeSpec(loaded={M: 1}, busy={M: 4}), NodeSpec(loaded={M: 1}, busy={M: 1})])
    assert decide(Scheduler("llmd_scorer"), view).node == 1  # 3 waiting vs 0


def test_llmd_breaks_ties_at_random():
    view = build_view(nodes(3))
    assert {decide(Scheduler("llmd_scorer", seed=s), view).node for s in range(40)} == {0, 1, 2}


def _candidates(view: ClusterView) -> Candidates:
    return Candidates(view, view.model_index[M], None, panic=False)


# -- SOLLOL --------------------------------------------------------------------------------


def test_sollol_multipliers_on_a_hand_computed_example():
    view = build_view([
        NodeSpec(loaded={M: 1}, mem_free=10 * GB),                  # 0
        NodeSpec(models=(M,), loaded={OTHER: 1}, mem_free=10 * GB),  # 1
    ])
    m = view.model_index[M]
    set_load(view, {1: 1})
    view.profiles.record(1, m, ok=True, ttft=0.1)
    view.profiles.record(1, m, ok=False)  # error rate 0.2: success 0.8
    scheduler = Scheduler("sollol")
    d = scheduler.decide(RouteRequest(M, prompt_tokens=100), view, 0.0)  # simple generation
    # node 0: loaded, idle, unmeasured: 100 x 1.5
    # node 1: cpu load 1/1 = 1 (> 0.9: x0.7), success 0.8, latency 100 ms at priority 5:
    #   / (1 + 0.1 x 1.5); one active on > 8 GB: base 1.15 x 0.8 -> 1.05, / (1.05 x 1.15);
    #   / (1 + 1.5 x 1); another model loaded: x0.95
    node1 = 100 * 0.7 * 0.8 / 1.15 / (1.05 * 1.15) / 2.5 * 0.95
    assert d.node == 0 and d.reason == "score 150.0"
    hosts = scheduler.strategy.hosts(view, m, np.array([0, 1]))
    scores = score_hosts(hosts, task_context(RouteRequest(M, prompt_tokens=100)))
    assert scores.tolist() == pytest.approx([150.0, node1])


def hosts(gpu_mb, active=0, cpu=0.0, success=1.0, latency=0.0, loaded=False,
          other=False, preferred=False) -> Hosts:
    n = len(gpu_mb)

    def arr(x, dtype=float):
        return np.broadcast_to(np.asarray(x, dtype), (n,)).copy()

    return Hosts(arr(gpu_mb), arr(active), arr(cpu), arr(success), arr(latency),
                 arr(loaded, bool), arr(other, bool), arr(preferred, bool))


def ctx(**kw) -> TaskContext:
    base = {"task_type": "generation", "complexity": "medium", "priority": 5,
            "requires_gpu": True, "duration_ms": 0.0}
    return TaskContext(**{**base, **kw})


def test_sollol_gpu_memory_multipliers():
    # cpu 0 -> / 1; medium complexity: no cpu factor; latency 0
    got = score_hosts(hosts([0, 500, 2000, 6000, 10000]), ctx())
    assert got.tolist() == pytest.approx([20.0, 90.0, 100.0, 150.0, 200.0])
    # a busy low-VRAM GPU (another GPU has room, so no CPU fallback): x0.9 x 0.6; one active
    # on under 1 GB: base 1.5, x0.8 for a fast node -> 1.2
    busy = score_hosts(hosts([500, 10000], active=[1, 0]), ctx())
    assert busy[0] == pytest.approx(100 * 0.54 / (1.2 * 1.15))


def test_sollol_falls_back_to_cpu_when_every_gpu_is_overwhelmed():
    got = score_hosts(hosts([0, 500, 800]), ctx())
    assert got.tolist() == pytest.approx([100.0, 70.0, 70.0])
    no_gpu_needed = score_hosts(hosts([0, 10000]), ctx(requires_gpu=False))
    assert no_gpu_needed.tolist() == pytest.approx([100.0, 100.0])


def test_sollol_latency_penalty_bands_and_priority_weight():
    lat = [100.0, 500.0, 2000.0]
    got = score_hosts(hosts([2000] * 3, latency=lat), ctx())
    w = 1.5
    assert got.tolist() == pytest.approx([100 / (1 + 0.1 * w), 100 / (1 + 5 * w),
                                          100 / (1 + 20 * w)])
    urgent = score_hosts(hosts([2000], latency=[500.0], cpu=0.5), ctx(priority=10))
    assert urgent[0] == pytest.approx(100 / (1 + 5 * 2.0) / (1 + 0.5 * 3.0))


def test_sollol_active_requests_base_follows_memory_and_latency():
    slow = score_hosts(hosts([10000], active=2, latency=6000.0), ctx(requires_gpu=False))
    base = min(2.0, 1.15 * 1.3)
    penalty = 6000 / 100 * 1.5
    assert slow[0] == pytest.approx(100 / (1 + penalty) / (base**2 * 1.3))


def test_sollol_complexity_priority_and_headroom_terms():
    complex_idle = score_hosts(hosts([2000], cpu=0.2), ctx(complexity="complex"))
    assert complex_idle[0] == pytest.approx(100 * 1.3 / 1.3)  # x1.3, / (1 + 1.5 x 0.2)
    preferred = score_hosts(hosts([2000], preferred=True), ctx(priority=10))
    assert preferred[0] == pytest.approx(150.0)
    long_busy = score_hosts(hosts([2000], cpu=0.7), ctx(duration_ms=6000))
    assert long_busy[0] == pytest.approx(100 / (1 + 1.05) * 0.7)


def test_sollol_task_context_from_a_request():
    assert task_context(RouteRequest(M, prompt_tokens=100)) == \
        TaskContext("generation", "simple", 5, False, 300.0)
    assert task_context(RouteRequest(M, prompt_tokens=2500, priority=0)).requires_gpu
    assert task_context(RouteRequest(M, endpoint="embed", prompt_tokens=10)) == \
        TaskContext("embedding", "simple", 5, True, 5.0)
    assert task_context(RouteRequest(M, priority=2)).priority == 2


def test_sollol_model_name_match_is_as_loose_as_sollol():
    names = ["llama3:8b", "llama3.2:1b", "mistral:7b", "llama3:70b"]
    assert sollol_aliases(names, 0) == [0, 1, 3]
    assert sollol_aliases(names, 2) == [2]


def test_sollol_prefers_a_node_labelled_priority_0():
    view = build_view([NodeSpec(loaded={M: 1}), NodeSpec(loaded={M: 1}, labels=("priority=0",))])
    assert decide(Scheduler("sollol"), view).node == 1


def test_sollol_sees_a_failure_reported_by_failover():
    view = build_view(nodes(2))
    scheduler = Scheduler("sollol")
    router = Router(scheduler, view)
    dispatch = router.arrive(RouteRequest(M), 0.0)
    failed = dispatch.decision.node
    router.failed_over(dispatch, failed, 1 - failed, 0.1)
    m = view.model_index[M]
    expected = 1.0 - view.profiles.get(failed, m).error_rate
    assert scheduler.strategy.columns.get("success", m)[failed] == pytest.approx(expected)


@pytest.mark.parametrize("name", ["consistent_hash_bounded", "sglang_cache_aware",
                                  "litellm_latency", "sollol"])
def test_a_strategy_moved_to_another_view_forgets_the_first(name):
    """The simulator may reuse a strategy across runs: nothing of the first view leaks."""
    first = build_view([NodeSpec(loaded={M: 1}, mem_free=GB) for _ in range(3)])
    second = build_view([NodeSpec(loaded={M: 1}, mem_free=GB) for _ in range(3)])
    for k in range(3):  # same numbers, other names: the ring must be rebuilt
        second.ids[k] = f"other{k}"
    record_latencies(first, 0, [9.0])
    first.prefixes.record(1, tuple(range(50)))
    for node, latency in enumerate((0.3, 0.1, 0.2)):  # no ties left to the random generator
        record_latencies(second, node, [latency])
    scheduler = Scheduler(name, seed=1)
    scheduler.decide(RouteRequest(M, prefix=(5,)), first, 0.0)
    fresh = Scheduler(name, seed=1).decide(RouteRequest(M, prefix=(5,)), second, 0.0)
    reused = scheduler.decide(RouteRequest(M, prefix=(5,)), second, 0.0)
    assert (reused.node, reused.fallbacks()) == (fresh.node, fresh.fallbacks())
