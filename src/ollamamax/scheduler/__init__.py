"""The scheduler: pure routing decisions (no I/O, no clock; time is an argument).

`Scheduler.decide(request, view, now)` returns the node to try and the ordered fallbacks. The
same code runs inside the gateway and inside the cluster simulator.
"""

from ollamamax.scheduler.decide import Candidates, Scheduler
from ollamamax.scheduler.request import PRIORITIES, Decision, RouteRequest
from ollamamax.scheduler.view import ClusterView, LoadedModel

__all__ = ["PRIORITIES", "Candidates", "ClusterView", "Decision", "LoadedModel",
           "RouteRequest", "Scheduler"]
