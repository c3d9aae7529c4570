"""``p2c``: the power of two choices: two distinct candidates at random, the less busy wins.

Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing" (2001); as in SGLang's
`power_of_two` policy (`sgl-router/src/policies/power_of_two.rs`: `choose_multiple(rng, 2)`,
then `if load1 <= load2 { worker1 } else { worker2 }`) and Envoy's least-request balancer.
Load is the gateway-side count of requests in flight (`view.in_flight`); on a tie the first
drawn wins, as in SGLang. The pair is drawn in O(1) (no permutation of all candidates).
Fallbacks: the other of the pair, then the rest by fewest in flight.
"""

from __future__ import annotations

import numpy as np

from ollamamax.scheduler.decide import Candidates
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.strategies._ordering import ranked
from ollamamax.scheduler.view import ClusterView


class PowerOfTwoChoices:
    name = "p2c"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def choose(self, request: RouteRequest, candidates: Candidates, view: ClusterView,
               now: float) -> Decision:
        idx = candidates.indices
        if len(idx) == 1:
            return Decision(int(idx[0]), (), "the only candidate")
        a, b = self._pair(len(idx))
        load_a, load_b = int(view.in_flight[idx[a]]), int(view.in_flight[idx[b]])
        win, lose = (a, b) if load_a <= load_b else (b, a)
        rest = np.delete(idx, [a, b])
        load = view.in_flight[rest].copy()
        node, other = int(idx[win]), int(idx[lose])
        return Decision(node, lambda: (other, *ranked(rest, load)),
                        f"two choices: {min(load_a, load_b)} vs {max(load_a, load_b)} in flight")

    def _pair(self, n: int) -> tuple[int, int]:
        """Two distinct positions, uniformly among the n(n-1) ordered pairs."""
        a = int(self.rng.integers(n))
        b = int(self.rng.integers(n - 1))
        return a, b + (b >= a)
