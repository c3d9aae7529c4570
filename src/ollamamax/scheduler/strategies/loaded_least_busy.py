"""Routing v0: a node with the model already loaded, then the fewest requests in flight.

Ties go to the node this gateway has sent the fewest requests to, then by id, so equal nodes
share the work and the decision is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.view import ClusterView, NodeState


class LoadedLeastBusy:
    name = "loaded_least_busy"

    def choose(self, request: RouteRequest, candidates: Sequence[NodeState], view: ClusterView,
               now: float) -> Decision:
        ranked = sorted(candidates, key=lambda n: (
            request.model not in n.loaded, n.in_flight, n.served, n.id))
        first = ranked[0]
        why = "loaded" if request.model in first.loaded else "not loaded anywhere free"
        return Decision(tuple(n.id for n in ranked), f"{why}, {first.in_flight} in flight")
