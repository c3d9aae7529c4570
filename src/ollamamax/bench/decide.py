"""``ollamamax bench decide``: how long one routing decision takes, per strategy and cluster size.

Every strategy decides on the same snapshot: `nodes` nodes, 20 models of 1-40 GB, each node
holding 8 of them with 3 loaded (4 slots each, 0-4 busy), a tenth of the nodes down or
draining, and a prefix index warmed with 64 prompt groups. Requests come from those groups
(2,048-token prompts in 32 blocks) and pick models with Zipf popularity. Timing is
`Scheduler.decide` alone, wall clock in `perf_counter_ns`, garbage collector on (a pause is
part of a decision's real cost); the fallbacks are not asked for (they are computed only when
the first node fails). Decisions run in 5 rounds and the median round's percentiles are
reported: this VM's speed drifts by tens of percent from one second to the next.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ollamamax.scheduler import ClusterView, LoadedModel, RouteRequest, Scheduler
from ollamamax.scheduler.strategies import STRATEGIES

MODELS = 20
PER_NODE = 8
LOADED = 3
SLOTS = 4
GROUPS = 64
BLOCKS = 32
PROMPT_TOKENS = 2048


@dataclass(frozen=True)
class Result:
    strategy: str
    nodes: int
    p50_us: float
    p99_us: float
    mean_us: float
    decisions: int


def build(nodes: int, seed: int = 0) -> tuple[ClusterView, list[RouteRequest]]:
    rng = np.random.default_rng(seed)
    view = ClusterView()
    names = [f"model-{k}:latest" for k in range(MODELS)]
    sizes = rng.integers(1, 41, MODELS) * 1_000_000_000
    for k in range(nodes):
        i = view.add(f"n{k}", f"http://10.0.{k // 250}.{k % 250}:11435",
                     mem_total=96_000_000_000, speed=float(rng.choice([0.5, 1.0, 2.0])))
        view.set_health(i, rng.random() > 0.05, 0.0)
        view.set_draining(i, rng.random() < 0.05)
        held = rng.choice(MODELS, PER_NODE, replace=False)
        loaded = [LoadedModel(names[m], SLOTS, int(rng.integers(0, SLOTS + 1)), 0, int(sizes[m]))
                  for m in held[:LOADED]]
        view.update(i, models=[(names[m], int(sizes[m])) for m in held], loaded=loaded,
                    queue_depth=int(rng.integers(0, 3)), mem_free=int(rng.integers(0, 64)) << 30)
    prefixes = [tuple(int(x) for x in rng.integers(1, 1 << 62, BLOCKS)) for _ in range(GROUPS)]
    for group in prefixes:  # each group's prompt was served by a few nodes already
        for node in rng.choice(nodes, 3, replace=False):
            view.prefixes.record(int(node), group)
    popularity = 1.0 / np.arange(1, MODELS + 1)
    popularity /= popularity.sum()
    requests = [RouteRequest(names[int(rng.choice(MODELS, p=popularity))],
                             prompt_tokens=PROMPT_TOKENS,
                             prefix=prefixes[int(rng.integers(GROUPS))])
                for _ in range(512)]
    return view, requests


ROUNDS = 5  # the VM's speed drifts by tens of percent: report the median round


def measure(strategy: str, view: ClusterView, requests: list[RouteRequest],
            decisions: int) -> Result:
    scheduler = Scheduler(strategy, seed=1)
    for r in requests[:64]:  # warm up: binding, caches, first-call costs
        scheduler.decide(r, view, 0.0)
    per_round = max(1, decisions // ROUNDS)
    clock = time.perf_counter_ns
    rounds = []
    for _ in range(ROUNDS):
        samples = np.empty(per_round, np.int64)
        gc.collect()
        for k in range(per_round):
            r = requests[k % len(requests)]
            t0 = clock()
            scheduler.decide(r, view, 0.0)
            samples[k] = clock() - t0
        us = samples / 1000.0
        rounds.append((np.percentile(us, 50), np.percentile(us, 99), us.mean()))
    p50, p99, mean = (float(np.median([r[k] for r in rounds])) for k in range(3))
    return Result(strategy, view.n, round(p50, 2), round(p99, 2), round(mean, 2),
                  per_round * ROUNDS)


def run(sizes: list[int], strategies: list[str], decisions: int,
        progress=print) -> list[Result]:
    results = []
    for nodes in sizes:
        progress(f"building a view of {nodes} nodes")
        view, requests = build(nodes)
        for name in strategies:
            results.append(measure(name, view, requests, decisions))
            progress(f"{name} at {nodes} nodes: p50 {results[-1].p50_us} us, "
                     f"p99 {results[-1].p99_us} us")
    return results


def write_json(results: list[Result], path: Path) -> None:
    path.write_text(json.dumps({"results": [asdict(r) for r in results]}, indent=2) + "\n")


def all_strategies() -> list[str]:
    return list(STRATEGIES)
