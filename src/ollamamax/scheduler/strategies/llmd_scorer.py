"""``llmd_scorer``: llm-d's default scheduling profile: filter, weighted scorers, max score.

Source: llm-d-inference-scheduler `pkg/epp/config/loader/defaults.go` (`loadDefaultConfig`:
one profile with `queue-scorer` weight 2, `kv-cache-utilization-scorer` weight 2,
`prefix-cache-scorer` weight 3, then the injected `max-score-picker`), and each plugin's
README under `pkg/epp/framework/plugins/scheduling/`:

- prefix-cache-scorer: ``matchLen / total`` request blocks, 0 for a request without blocks;
- kv-cache-utilization-scorer: ``1 - KVCacheUsagePercent``;
- queue-scorer: ``(maxQueue - queue) / (maxQueue - minQueue)`` over the candidates, 1.0 for
  every candidate when all queues are equal;
- max-score-picker: shuffles the scored endpoints, then sorts by score, descending: equal
  scores are broken at random.

The default profile has no filter beyond the candidate set itself (healthy pods serving the
model), which is what `candidates` is.

Mapping to an Ollama fleet (per model on a node: a pod serves one model in llm-d):
- KV utilisation = used slots / slots of the model on the node, clipped to 1, "used" being
  the view's `used_slots` (this gateway's requests plus the other gateways' last reported);
  a node without the model loaded has 0 utilisation (an empty pod's KV cache);
- queue = what the node reports waiting for the model from other gateways (`queued`, our
  own share already taken out by the view) + this gateway's requests beyond the free slots,
  i.e. ``queued + max(0, used - slots)``; for a node without the model loaded, every request
  sent there waits for the load;
- prefix blocks from `view.prefixes` (node-wide, where llm-d's index is scoped per model).
Fallbacks: by score, equal scores in the decision's random order.
"""

from __future__ import annotations

import numpy as np

from ollamamax.scheduler.decide import Candidates
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.strategies._ordering import (
    SEED_RANGE,
    aligned,
    pick_random,
    ranked_desc_shuffled,
)
from ollamamax.scheduler.view import ClusterView

PREFIX_WEIGHT = 3.0
KV_CACHE_WEIGHT = 2.0
QUEUE_WEIGHT = 2.0


def prefix_scores(view: ClusterView, prefix: tuple[int, ...], idx: np.ndarray) -> np.ndarray:
    """Leading blocks each candidate holds over the request's blocks (0 without blocks)."""
    if not prefix:
        return np.zeros(len(idx))
    return aligned(idx, view.prefixes.matches(prefix)) / len(prefix)


def used_slots(view: ClusterView, m: int, idx: np.ndarray) -> np.ndarray:
    """`view.used_slots` over the candidates."""
    return view.busy[m][idx].astype(np.int64) + view.reported_busy[m][idx]


def kv_utilisation(view: ClusterView, m: int, idx: np.ndarray) -> np.ndarray:
    slots = view.slots[m][idx]
    loaded = view.loaded[m][idx] & (slots > 0)
    used = used_slots(view, m, idx)
    return np.where(loaded, np.minimum(used / np.maximum(slots, 1), 1.0), 0.0)


def queue_lengths(view: ClusterView, m: int, idx: np.ndarray) -> np.ndarray:
    beyond = np.maximum(0, used_slots(view, m, idx) - view.slots[m][idx])
    return view.queued[m][idx] + beyond


def queue_scores(queue: np.ndarray) -> np.ndarray:
    lo, hi = queue.min(), queue.max()
    if hi == lo:
        return np.ones(len(queue))
    return (hi - queue) / (hi - lo)


class LLMDScorer:
    name = "llmd_scorer"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def scores(self, request: RouteRequest, candidates: Candidates,
               view: ClusterView) -> np.ndarray:
        idx, m = candidates.indices, candidates.model
        return (PREFIX_WEIGHT * prefix_scores(view, request.prefix, idx)
                + KV_CACHE_WEIGHT * (1.0 - kv_utilisation(view, m, idx))
                + QUEUE_WEIGHT * queue_scores(queue_lengths(view, m, idx)))

    def choose(self, request: RouteRequest, candidates: Candidates, view: ClusterView,
               now: float) -> Decision:
        idx = candidates.indices
        score = self.scores(request, candidates, view)
        best = float(score.max())
        node = pick_random(self.rng, idx[score == best])
        child = int(self.rng.integers(SEED_RANGE))
        return Decision(node, lambda: ranked_desc_shuffled(idx, score, child),
                        f"highest score {best:.2f} of 7")
