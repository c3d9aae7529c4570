"""A node slow to answer (a slow link, a fault proxy adding 150 ms) is priced at its real
overhead and loses traffic; one outlier is not; the simulator's decisions do not move.

The overhead is what a request's TTFT holds beyond the wait before it was sent, the node's
load and its prefill (`PerformanceProfiles.record(overhead=)`, fed by `Router.finished`).
"""

from __future__ import annotations

import numpy as np
import pytest

from ollamamax.scheduler import ClusterView, LoadedModel, RouteRequest, Scheduler
from ollamamax.scheduler.profiles import PerformanceProfiles, Profile
from ollamamax.scheduler.router import Dispatch, Router
from ollamamax.scheduler.strategies import intelligent
from ollamamax.scheduler.strategies.intelligent import Intelligent
from ollamamax.sim import workloads as w
from ollamamax.sim.cluster import ClusterConfig, Simulation, capacity

M = "m:8b"
PREFILL_S = 0.05  # what each node reports for the prompt
FAST_S, SLOW_S = 0.002, 0.150  # the node's own overhead: loopback, or through the fault proxy


def floor_after(observations: list[float]) -> float:
    profiles = PerformanceProfiles()
    for seen in observations:
        profiles.record(0, 0, ok=True, ttft=1.0, overhead=seen)
    profile = profiles.get(0, 0)
    assert profile is not None
    return profile.overhead


def test_the_floor_drops_at_once_and_rises_only_while_the_node_stays_slow():
    fast = [FAST_S] * 20  # it starts at 0 and rises towards what it sees
    assert floor_after(fast) == pytest.approx(FAST_S, rel=0.01)
    # one outlier (a retry, a pause) moves nothing, even a huge one; nor does one per pair
    assert floor_after([*fast, 3.0]) <= FAST_S
    assert floor_after([*fast, 3.0, FAST_S, 3.0, FAST_S, 3.0]) <= FAST_S
    # a node that stays slow is priced above the 30 ms default within 3 requests, at 90% of
    # its overhead within 10, at its overhead within 20
    assert floor_after([*fast, *[SLOW_S] * 3]) > intelligent.OVERHEAD_S
    assert floor_after([*fast, *[SLOW_S] * 10]) > 0.9 * SLOW_S
    assert floor_after([*fast, *[SLOW_S] * 20]) == pytest.approx(SLOW_S, rel=0.01)
    # and one fast answer brings it down at once
    assert floor_after([*fast, *[SLOW_S] * 20, FAST_S]) == FAST_S
    # failures, and requests whose node reported no timings, leave it alone
    profiles = PerformanceProfiles()
    for _ in range(20):
        profiles.record(0, 0, ok=True, overhead=FAST_S)
    profiles.record(0, 0, ok=False, overhead=SLOW_S)
    profiles.record(0, 0, ok=False, overhead=SLOW_S)
    profiles.record(0, 0, ok=True, ttft=9.0)
    profiles.record(0, 0, ok=True, ttft=9.0)
    assert profiles.get(0, 0).overhead == floor_after(fast)


def cluster(nodes: int = 2, slots: int = 4) -> tuple[Router, ClusterView]:
    view = ClusterView()
    for k in range(nodes):
        i = view.add(f"n{k}", f"http://n{k}")
        view.set_health(i, True, 0)
        view.update(i, models=[(M, 4_000_000_000)],
                    loaded=[LoadedModel(M, slots=slots, size=4_000_000_000)])
    return Router(Scheduler("intelligent"), view), view


def serve(router: Router, own: dict[int, float], n: int, *, waited_s: float = 0.0,
          outlier: int | None = None) -> list[int]:
    """`n` requests one after another, each finished with the TTFT the gateway measures:
    the wait before it was sent, then the node's own overhead and its prefill."""
    chosen = []
    for k in range(n):
        d = router.arrive(RouteRequest(M, prompt_tokens=200), float(k))
        assert isinstance(d, Dispatch)
        node = d.decision.node
        extra = 2.5 if k == outlier else 0.0  # e.g. an earlier attempt that failed first
        router.finished(node, d.model, k + 0.5, ok=True, duration=0.5, prompt_tokens=200,
                        prefill_s=PREFILL_S, output_tokens=32, decode_s=0.4,
                        ttft=waited_s + extra + own[node] + PREFILL_S, waited_s=waited_s)
        chosen.append(node)
    return chosen


def test_a_slowed_node_is_priced_higher_and_loses_traffic_to_an_equal_fast_one():
    router, view = cluster()
    # node 0 is slowed; on equal costs the strategy would keep choosing node 0 (lowest index)
    chosen = serve(router, {0: SLOW_S, 1: FAST_S}, 40)
    assert chosen[:2] == [0, 0] and chosen[5:] == [1] * 35, chosen
    m = view.model_id(M)
    assert Intelligent._speeds(view.profiles.get(0, m), 1.0)[2] > intelligent.OVERHEAD_S
    strategy = router.scheduler.strategy
    assert strategy.base[m][0] > strategy.base[m][1]


def concurrent(strategy: str | Intelligent, in_flight: int, n: int = 300) -> tuple[list[int],
                                                                                  ClusterView]:
    """`n` requests with `in_flight` of them running at once (the oldest ends as each
    arrives) on two equal nodes of 4 slots, node 0 slowed by `SLOW_S`."""
    router, view = cluster()
    router = Router(Scheduler(strategy), view)
    own = {0: SLOW_S, 1: FAST_S}
    running: list[Dispatch] = []
    chosen = []
    for k in range(n):
        d = router.arrive(RouteRequest(M, prompt_tokens=200), float(k))
        assert isinstance(d, Dispatch)
        running.append(d)
        chosen.append(d.decision.node)
        if len(running) >= in_flight:
            done = running.pop(0)
            node = done.decision.node
            router.finished(node, done.model, k + 0.5, ok=True, duration=0.5, prompt_tokens=200,
                            prefill_s=PREFILL_S, output_tokens=32, decode_s=0.4,
                            ttft=own[node] + PREFILL_S)
    return chosen, view


@pytest.mark.parametrize("in_flight", [3, 5])
def test_under_load_the_slowed_node_gets_the_smaller_share_and_its_real_price(in_flight):
    chosen, view = concurrent("intelligent", in_flight)
    before, _ = concurrent(WithoutFloor(), in_flight)
    assert chosen.count(0) < chosen.count(1)
    assert chosen.count(0) < before.count(0)  # the 30 ms cap gave it at least as many
    assert before.count(0) >= before.count(1)
    if in_flight == 5:  # it still serves some: what it answers keeps its price real
        assert view.profiles.get(0, view.model_id(M)).overhead == pytest.approx(SLOW_S, rel=0.01)


def test_waiting_at_the_gateway_does_not_make_a_node_look_slow():
    router, view = cluster()
    # every request waited 1.5 s in the admission queue; the nodes themselves are equal
    chosen = serve(router, {0: FAST_S, 1: FAST_S}, 20, waited_s=1.5)
    assert chosen.count(0) == 20
    assert view.profiles.get(0, view.model_id(M)).overhead == pytest.approx(FAST_S, rel=0.01)


def test_one_outlier_does_not_move_traffic():
    router, view = cluster()
    equal = {0: FAST_S, 1: FAST_S}
    assert serve(router, equal, 10) == [0] * 10
    assert serve(router, equal, 1, outlier=0) == [0]  # that one took 2.5 s longer
    assert serve(router, equal, 10) == [0] * 10
    assert view.profiles.get(0, view.model_id(M)).overhead <= FAST_S


def test_the_nodes_load_and_a_non_streamed_answers_decoding_are_not_overhead():
    router, view = cluster(nodes=1)
    for _ in range(20):
        d = router.arrive(RouteRequest(M, prompt_tokens=200, stream=False), 0.0)
        # TTFT of a non-streamed request is the whole answer: wait, load, prefill, decoding
        router.finished(d.decision.node, d.model, 1.0, ok=True, ttft=0.3 + 2.0 + 0.05 + 0.9
                        + FAST_S, waited_s=0.3, load_s=2.0, prefill_s=0.05, decode_s=0.9,
                        output_tokens=32, duration=3.0, stream=False)
    assert view.profiles.get(0, d.model).overhead == pytest.approx(FAST_S, rel=0.01)


class WithoutFloor(Intelligent):
    """`intelligent` as it was before the overhead floor."""

    @staticmethod
    def _speeds(profile: Profile | None, speed: float) -> tuple[float, float, float]:
        per_token = intelligent.PREFILL_S_PER_TOKEN / speed
        service = intelligent.SERVICE_S / speed
        overhead = intelligent.OVERHEAD_S / speed
        if profile is not None and profile.requests > profile.errors:
            if profile.prefill_tps > 0:
                per_token = 1.0 / profile.prefill_tps
            if profile.duration > 0:
                service = profile.duration
            overhead = min(overhead, profile.ttft)
        return per_token, service, overhead


@pytest.mark.parametrize(("name", "network_s"), [("multi-turn", 0.0), ("zipf-models", 0.004)])
def test_the_simulators_decisions_on_a_uniform_cluster_are_unchanged(name, network_s):
    config = ClusterConfig(nodes=4, slots=2, seed=3, network_s=network_s, max_loaded=2)
    options = w.WorkloadOptions(name=name, requests=300, seed=3, load=0.95,
                                models=w.parse_models("6") if name == "zipf-models" else ())
    workload = w.build(options, lambda p, o: capacity(config, p, o))
    now = Simulation(workload, config, "intelligent")
    now.run()
    before = Simulation(workload, config, WithoutFloor())
    before.run()
    assert np.array_equal(now.tally.node, before.tally.node)
    assert np.array_equal(now.tally.ttft, before.tally.ttft, equal_nan=True)
    # requests did wait at the gateway and behind loads, yet each node's overhead is only
    # the network both ways: the simulator passes the node's own latency
    arrivals = np.array([r.arrival for r in workload.requests])
    assert (now.sent_at - arrivals).max() > 0.1
    floors = [p.overhead for p in now.view.profiles._profiles.values() if p.requests]
    assert floors and max(floors) == pytest.approx(2 * network_s, abs=1e-9)
