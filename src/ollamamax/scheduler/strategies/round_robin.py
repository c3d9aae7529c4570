"""``round_robin``: one shared counter, taken modulo the current candidates.

Follows SGLang's router (`sgl-router/src/policies/round_robin.rs`: `counter.fetch_add(1) %
healthy_indices.len()`) and vLLM production-stack's `RoundRobinRouter`
(`sorted(endpoints, key=url)[req_id % len(endpoints)]; req_id += 1`): candidates in node
order, one counter for every model, so when the candidate list changes the turn lands
wherever the modulo puts it, as it does in both peers. Fallbacks: the candidates that follow
in the cycle.
"""

from __future__ import annotations

import numpy as np

from ollamamax.scheduler.decide import Candidates
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.strategies._ordering import as_tuple
from ollamamax.scheduler.view import ClusterView


class RoundRobin:
    name = "round_robin"

    def __init__(self, seed: int = 0) -> None:
        del seed  # deterministic
        self.counter = 0

    def choose(self, request: RouteRequest, candidates: Candidates, view: ClusterView,
               now: float) -> Decision:
        idx = candidates.indices
        turn = self.counter % len(idx)
        self.counter += 1
        return Decision(int(idx[turn]), lambda: as_tuple(np.roll(idx, -turn)[1:]),
                        f"round robin, turn {turn} of {len(idx)}")
