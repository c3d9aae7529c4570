from __future__ import annotations

import dataclasses

import pytest

from ollamamax.sim import timing
from ollamamax.sim import workloads as w
from ollamamax.sim.cluster import ClusterConfig, Simulation, capacity, node_profiles, parse_profiles
from ollamamax.sim.run import RESULT_KEYS, run, summarise
from ollamamax.sim.workloads import SimRequest, Workload

GPU = timing.PROFILES["gpu-8b"]
MODEL, SIZE = "m:8b", 4_000_000_000
PROMPT = 1024


def workload(*requests: SimRequest, models: dict[str, int] | None = None) -> Workload:
    return Workload("test", list(requests), models or {MODEL: SIZE}, block_tokens=64, rate=1.0)


def req(at: float, prefix: tuple[int, ...] = (), tokens: int = PROMPT, out: int = 11,
        model: str = MODEL) -> SimRequest:
    return SimRequest(at, model, tokens, out, prefix or tuple(range(int(at * 1000) * 100,
                                                                     int(at * 1000) * 100 + tokens // 64)))


def simulate(wl: Workload, strategy: str = "intelligent", **config) -> Simulation:
    config.setdefault("nodes", 1)
    sim = Simulation(wl, ClusterConfig(**config), strategy)
    sim.run()
    return sim


def test_a_cold_load_costs_the_load_time() -> None:
    sim = simulate(workload(req(1.0)))
    expected = timing.load_time(GPU, SIZE) + timing.ttft(GPU, PROMPT)
    assert sim.tally.ttft[0] == pytest.approx(expected)
    assert sim.tally.e2e[0] == pytest.approx(expected + 10 * timing.time_between_tokens(GPU))
    assert sim.nodes[0].cold_loads == 1


def test_network_latency_counts_both_ways() -> None:
    sim = simulate(workload(req(1.0)), network_s=0.01)
    node = timing.load_time(GPU, SIZE) + timing.ttft(GPU, PROMPT)
    assert sim.tally.ttft[0] == pytest.approx(node + 0.02)
    assert sim.tally.e2e[0] == pytest.approx(node + 0.02 + 10 * GPU.decode_s_per_token)


def test_a_repeated_prefix_hits_the_cache_and_starts_sooner() -> None:
    shared = tuple(range(1, PROMPT // 64 + 1))
    sim = simulate(workload(req(1.0, shared), req(30.0, shared), req(60.0)))
    first, again, other = sim.tally.ttft
    load = timing.load_time(GPU, SIZE)
    assert first - load == pytest.approx(timing.ttft(GPU, PROMPT))
    assert again == pytest.approx(timing.ttft(GPU, 1))  # all but the last token cached
    assert other == pytest.approx(timing.ttft(GPU, PROMPT))
    assert again < other
    node = sim.nodes[0]
    assert node.cached_tokens == PROMPT - 1 and node.cold_loads == 1


def test_a_full_node_queue_fails_over_to_the_next_node() -> None:
    # queue 1: each cold node holds one request while it loads and refuses a second (503)
    wl = workload(*(req(1.0 + k * 1e-3) for k in range(4)))
    sim = simulate(wl, "loaded_least_busy", nodes=2, max_queue=1)
    tally = sim.tally
    assert tally.failovers >= 1
    assert tally.failed["node queue full (503)"] >= 1
    assert tally.finished + sum(tally.failed.values()) == tally.arrived == 4


def test_keep_alive_expiry_unloads_in_virtual_time() -> None:
    wl = workload(req(1.0), req(100.0))
    assert simulate(wl, keep_alive=300.0).nodes[0].cold_loads == 1
    sim = simulate(wl, keep_alive=10.0)
    assert sim.nodes[0].cold_loads == 2
    assert sim.tally.ttft[1] == pytest.approx(sim.tally.ttft[0])


def test_the_gateway_learns_loads_and_unloads_from_telemetry() -> None:
    wl = workload(req(1.0), req(40.0))
    sim = Simulation(wl, ClusterConfig(nodes=1, keep_alive=5.0), "intelligent")
    sim.start()
    sim.loop.run(until=lambda: sim.loop.now > 8.0)
    assert sim.view.loaded[0][0]
    sim.loop.run(until=lambda: sim.loop.now > 30.0)  # idle 5 s, reported within 1 s
    assert not sim.view.loaded[0][0]
    assert not sim.nodes[0].residency.runners


def test_memory_too_small_for_the_model_is_refused() -> None:
    wl = workload(req(1.0), models={MODEL: 20 * timing.GIB})
    sim = simulate(wl, "loaded_least_busy", profiles=(("cpu-small", 1),))
    assert sim.tally.failed == {"model too large": 1}


def test_concurrent_decodes_slow_each_other_down() -> None:
    alone = simulate(workload(req(1.0, out=200)), slots=2)
    both = simulate(workload(req(1.0, out=200), req(1.0005, out=200)), slots=2)
    assert both.tally.e2e[0] > alone.tally.e2e[0]
    decode_alone = alone.tally.e2e[0] - alone.tally.ttft[0]
    assert decode_alone == pytest.approx(199 * GPU.decode_s_per_token)
    # Both start when the load ends (L): the first prefills alone (factor 1), the second
    # beside it (2 sequences on 2 slots: the profile's full slowdown, 2x). Both decode at 2x
    # until the first ends; the second does its last tokens alone at 1x.
    load, tbt = timing.load_time(GPU, SIZE), GPU.decode_s_per_token
    p1, p2 = timing.ttft(GPU, PROMPT), 2 * timing.ttft(GPU, PROMPT)
    end1 = load + p1 + 199 * 2 * tbt
    done2 = (end1 - (load + p2)) / (2 * tbt)
    assert both.tally.e2e[0] == pytest.approx(end1)  # both arrive at ~1 s, as the load starts
    assert both.tally.e2e[1] + 0.0005 == pytest.approx(end1 + (199 - done2) * tbt)


def test_gateway_queue_holds_requests_for_intelligent_only_by_default() -> None:
    config = ClusterConfig()
    assert config.queues("intelligent") and not config.queues("round_robin")
    assert ClusterConfig(gateway_queue=True).queues("round_robin")


def test_requests_waiting_too_long_time_out() -> None:
    wl = workload(*(req(1.0 + k * 1e-3, out=2000) for k in range(3)))
    sim = simulate(wl, ttft_timeout=20.0)  # each takes ~24 s on the one slot
    tally = sim.tally
    assert tally.failed["first token timeout"] == 2 and tally.finished == 1


def small_workload(seed: int = 0) -> Workload:
    config = ClusterConfig(nodes=3)
    return w.build(w.WorkloadOptions(name="multi-turn", requests=150, seed=seed, load=0.9),
                   lambda p, o: capacity(config, p, o))


@pytest.mark.parametrize("strategy", ["intelligent", "loaded_least_busy"])
def test_same_seed_gives_identical_results(strategy: str) -> None:
    config = ClusterConfig(nodes=3, slots=2, seed=7)
    a = run(small_workload(), config, [strategy])
    b = run(small_workload(), config, [strategy])
    assert a == b


@pytest.mark.parametrize("strategy", ["intelligent", "loaded_least_busy"])
def test_every_request_is_accounted_for(strategy: str) -> None:
    wl = w.build(w.WorkloadOptions(name="zipf-models", requests=300, rate=3.0,
                                   models=w.parse_models("6")))
    sim = simulate(wl, strategy, nodes=3, max_queue=2, max_loaded=2, keep_alive=20.0)
    tally = sim.tally
    assert tally.arrived == 300
    assert tally.finished + sum(tally.failed.values()) == 300
    result = summarise(strategy, sim, tally)
    assert set(RESULT_KEYS) <= set(result)
    assert result["requests"] == 300 and result["cold_loads"] >= 3


def test_node_profile_mixes_are_interleaved_in_proportion() -> None:
    config = ClusterConfig(nodes=8, profiles=parse_profiles("gpu-8b:3,cpu-small:1"))
    names = [p.name for p in node_profiles(config)]
    assert names.count("gpu-8b") == 6 and names.count("cpu-small") == 2
    assert names[:4].count("cpu-small") == 1


def test_capacity_adds_up_the_nodes() -> None:
    one = capacity(ClusterConfig(nodes=1), 1000, 100)
    service = timing.ttft(GPU, 1000) + 99 * GPU.decode_s_per_token
    assert one == pytest.approx(1 / service)
    assert capacity(ClusterConfig(nodes=10), 1000, 100) == pytest.approx(10 * one)


def test_prewarming_loads_a_rising_model_before_its_requests_and_counts_the_load_apart() -> None:
    options = w.WorkloadOptions(name="shifting-models", requests=2500, load=0.8, seed=0)
    base = ClusterConfig(nodes=8, slots=4, num_ctx=8192, warmup_s=120.0)
    wl = w.build(options, lambda p, o: capacity(base, p, o))
    config = dataclasses.replace(base, max_loaded=wl.max_loaded, keep_alive=wl.keep_alive)
    results = {}
    for prewarm in (False, True):
        sim = Simulation(wl, dataclasses.replace(config, prewarm=prewarm), "intelligent")
        results[prewarm] = summarise("intelligent", sim, sim.run()), sim
    (cold, _), (warm, warm_sim) = results[False], results[True]
    assert cold["failed"] == warm["failed"] == 0
    assert warm["prewarm_loads"] > 0 and "prewarm_loads" not in cold
    assert warm["prewarm_used"] > 0
    assert warm["cold_loads"] < cold["cold_loads"]
    # a prewarm load is not a cold load: the nodes count them apart
    assert sum(len(n.prewarm_load_times) for n in warm_sim.nodes) >= warm["prewarm_loads"]
