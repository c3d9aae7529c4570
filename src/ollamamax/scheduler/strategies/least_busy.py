"""``least_busy``: the fewest requests in flight, as LiteLLM's `least-busy` routing does it.

Source: LiteLLM `litellm/router_strategy/least_busy.py`, `_get_available_deployments`:

    for d in healthy_deployments: all_deployments.setdefault(d.id, 0)
    min_traffic = inf
    for k, v in all_deployments.items():      # every deployment ever counted, healthy or not
        if v < min_traffic: min_traffic, min_deployment = v, k
    if min_deployment is healthy: return it
    return random.choice(healthy_deployments)

Copied as is, including two things the brief's summary ("ties at random") does not say:

- ties go to the *first* deployment with the fewest requests, in the order the counter dict
  first saw them (the configuration order, here the node number), not at random;
- the minimum is taken over every deployment of the model group LiteLLM has counted (here:
  every present node holding the model, whatever its health or labels); when that minimum is
  not a candidate (down, cooling down, filtered out), LiteLLM picks a healthy deployment
  uniformly at random, ignoring load. This is why least-busy survived a killed backend in
  NOTES' measurement: the dead node's count falls to zero and traffic spreads at random.

Load is the gateway-side in-flight count of the node (`view.in_flight`), which is also what
Olla's least-connections balancer counts; LiteLLM's own counter is per model group (per
node and model), the same thing when a node serves one model. Fallbacks: candidates by
fewest in flight, then node number.
"""

from __future__ import annotations

import numpy as np

from ollamamax.scheduler.decide import Candidates
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.strategies._ordering import pick_random, ranked
from ollamamax.scheduler.view import ClusterView

_NONE = np.iinfo(np.int64).max


class LeastBusy:
    name = "least_busy"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def choose(self, request: RouteRequest, candidates: Candidates, view: ClusterView,
               now: float) -> Decision:
        idx = candidates.indices
        load = view.in_flight[idx].copy()
        first = _first_least_busy(view, candidates.model)
        if first >= 0 and candidates.mask[first]:
            node, why = first, f"least busy, {view.in_flight[first]} in flight"
        else:
            node, why = pick_random(self.rng, idx), "least busy node unavailable: random"
        return Decision(node, lambda: ranked(idx, load), why)


def _first_least_busy(view: ClusterView, model: int) -> int:
    """The lowest-numbered present holder of `model` with the fewest in flight, or -1."""
    n = view.n
    counted = view.has[model][:n] & view.present[:n]
    loads = np.where(counted, view.in_flight[:n], _NONE)
    i = int(loads.argmin()) if n else -1
    return i if i >= 0 and loads[i] != _NONE else -1
