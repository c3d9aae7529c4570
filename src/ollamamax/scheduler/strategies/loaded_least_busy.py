"""Routing v0: a node with the model already loaded, then the fewest requests in flight.

Ties go to the node this gateway has sent the fewest requests to, then the lowest number, so
equal nodes share the work and the decision is deterministic.
"""

from __future__ import annotations

import numpy as np

from ollamamax.scheduler.decide import Candidates
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.view import ClusterView


class LoadedLeastBusy:
    name = "loaded_least_busy"

    def __init__(self, seed: int = 0) -> None:
        del seed  # deterministic

    def choose(self, request: RouteRequest, candidates: Candidates, view: ClusterView,
               now: float) -> Decision:
        idx = candidates.indices
        m = candidates.model
        order = np.lexsort((idx, view.served[idx], view.in_flight[idx], ~view.loaded[m][idx]))
        ranked = tuple(int(i) for i in idx[order])
        first = ranked[0]
        why = "loaded" if view.loaded[m][first] else "not loaded anywhere free"
        return Decision(first, ranked[1:], f"{why}, {view.in_flight[first]} in flight")
