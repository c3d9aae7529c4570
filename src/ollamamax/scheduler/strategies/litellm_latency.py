"""``litellm_latency``: LiteLLM's `latency-based-routing`: the lowest mean recent latency.

Source: LiteLLM `litellm/router_strategy/lowest_latency.py`
(`LowestLatencyLoggingHandler._get_available_deployments`, `RoutingArgs`):

- per deployment a list of latencies, at most `max_latency_list_size = 10`; the value
  ranked is the list's mean;
- a deployment not yet used gets `{"latency": [0]}`: mean 0, so every new deployment is tried
  before any measured one (copied: no profile or no latency yet means 0);
- deployments are shuffled (`random.sample`), sorted by mean, and one is drawn at random
  among those within `lowest_latency_buffer` (default 0) of the lowest:
  `valid = [d for d in sorted if d.latency <= lowest + buffer * lowest]`.

What is measured comes from `view.profiles` (`Profile.latencies`, the last 10), which the
router fills with the time to first token for streamed requests and the time per output
token otherwise (LiteLLM's `time_to_first_token` and `latency` lists). Differences kept on
purpose, for the report: LiteLLM keeps two lists and reads the TTFT one only when the
*current* request streams; its TTFT entries are divided by the completion tokens; when a
list is full it keeps the first nine entries and replaces the last
(`latency[:size - 1] + [new]`), where our profile keeps the last ten; and a timeout appends
a 1000 s penalty, where our profile records no latency for a failure.

The means are kept per (model, node) in arrays refreshed through the view's listeners
(`ProfileColumns`), so a decision is vector work over the candidates. Fallbacks: by mean
latency, equal means in the decision's random order.
"""

from __future__ import annotations

import numpy as np

from ollamamax.scheduler.decide import Candidates
from ollamamax.scheduler.profiles import Profile
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.strategies._ordering import SEED_RANGE, pick_random, ranked_desc_shuffled
from ollamamax.scheduler.strategies._profile_columns import ProfileColumns
from ollamamax.scheduler.view import ClusterView

LOWEST_LATENCY_BUFFER = 0.0  # LiteLLM RoutingArgs.lowest_latency_buffer


def _mean_latency(profile: Profile) -> float:
    mean = profile.mean_latency()
    return 0.0 if mean is None else mean


class LiteLLMLatency:
    name = "litellm_latency"

    def __init__(self, seed: int = 0, buffer: float = LOWEST_LATENCY_BUFFER) -> None:
        self.rng = np.random.default_rng(seed)
        self.buffer = buffer
        self.columns = ProfileColumns(latency=(0.0, _mean_latency))

    def bind(self, view: ClusterView) -> None:
        self.columns.bind(view)

    def choose(self, request: RouteRequest, candidates: Candidates, view: ClusterView,
               now: float) -> Decision:
        self.columns.ensure_bound(view)
        idx = candidates.indices
        latency = self.columns.get("latency", candidates.model)[idx]
        lowest = float(latency.min())
        valid = idx[latency <= lowest + self.buffer * lowest]
        node = pick_random(self.rng, valid)
        child = int(self.rng.integers(SEED_RANGE))
        return Decision(node, lambda: ranked_desc_shuffled(idx, -latency, child),
                        f"lowest mean latency {lowest * 1000:.1f} ms "
                        f"({len(valid)} within the buffer)")
