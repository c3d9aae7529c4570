"""``random``: a candidate drawn uniformly at random (seeded).

Follows LiteLLM's default `simple-shuffle` without weights (`random.choice(healthy
deployments)`, router_strategy/simple_shuffle.py) and SGLang's `random` policy
(`sgl-router/src/policies/random.rs`). Fallbacks: the other candidates in a random order,
drawn from a child seed taken at decision time, so asking for them later does not change
the decisions that follow.
"""

from __future__ import annotations

import numpy as np

from ollamamax.scheduler.decide import Candidates
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.strategies._ordering import SEED_RANGE, as_tuple
from ollamamax.scheduler.view import ClusterView


class RandomChoice:
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def choose(self, request: RouteRequest, candidates: Candidates, view: ClusterView,
               now: float) -> Decision:
        idx = candidates.indices
        k = int(self.rng.integers(len(idx)))
        child = int(self.rng.integers(SEED_RANGE))
        return Decision(int(idx[k]), lambda: _shuffled_rest(idx, k, child),
                        f"uniform random among {len(idx)}")


def _shuffled_rest(idx: np.ndarray, k: int, seed: int) -> tuple[int, ...]:
    return as_tuple(np.random.default_rng(seed).permutation(np.delete(idx, k)))
