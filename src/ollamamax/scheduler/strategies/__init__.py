"""Routing strategies, one module each, chosen by name (``scheduler.strategy``).

Every strategy is pure and synchronous:

    choose(request: RouteRequest, candidates: Candidates, view: ClusterView, now: float)
        -> Decision

`candidates` is never empty. A strategy may also have ``bind(view)``, called once before its
first decision on a view, to keep derived arrays current through the view's listeners.
Randomness comes from a seeded `numpy.random.Generator` given at construction.
"""

from __future__ import annotations

from typing import Any

from ollamamax import registry

STRATEGIES = {
    "round_robin": "ollamamax.scheduler.strategies.round_robin:RoundRobin",
    "random": "ollamamax.scheduler.strategies.random_choice:RandomChoice",
    "least_busy": "ollamamax.scheduler.strategies.least_busy:LeastBusy",
    "litellm_latency": "ollamamax.scheduler.strategies.litellm_latency:LiteLLMLatency",
    "p2c": "ollamamax.scheduler.strategies.p2c:PowerOfTwoChoices",
    "consistent_hash_bounded":
        "ollamamax.scheduler.strategies.consistent_hash_bounded:ConsistentHashBounded",
    "sglang_cache_aware": "ollamamax.scheduler.strategies.sglang_cache_aware:SGLangCacheAware",
    "llmd_scorer": "ollamamax.scheduler.strategies.llmd_scorer:LLMDScorer",
    "sollol": "ollamamax.scheduler.strategies.sollol:Sollol",
    "loaded_least_busy": "ollamamax.scheduler.strategies.loaded_least_busy:LoadedLeastBusy",
    "intelligent": "ollamamax.scheduler.strategies.intelligent:Intelligent",
}


def create(name: str, *, seed: int = 0) -> Any:
    return registry.load("strategy", STRATEGIES, name)(seed=seed)
