"""From a request and the cluster view to a `Decision`: candidates, then the strategy."""

from __future__ import annotations

from ollamamax.errors import ModelNotFound
from ollamamax.scheduler import strategies
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.view import ClusterView


class Scheduler:
    def __init__(self, strategy: str = "loaded_least_busy") -> None:
        self.strategy = strategies.create(strategy)

    def decide(self, request: RouteRequest, view: ClusterView, now: float) -> Decision:
        """The nodes to try for `request`, best first.

        Only healthy nodes with the model are candidates. When every node with the model is
        down, they are all returned anyway (panic routing: trying a node that may have come
        back beats refusing for sure). No node with the model at all is `ModelNotFound`.
        """
        holders = view.with_model(request.model)
        if not holders:
            raise ModelNotFound(request.model)
        healthy = [n for n in holders if n.healthy]
        if healthy:
            return self.strategy.choose(request, healthy, view, now)
        decision = self.strategy.choose(request, holders, view, now)
        return Decision(decision.nodes, "panic: every node with the model is down")
