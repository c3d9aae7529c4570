"""The scheduler: pure routing decisions (no I/O, no clock; time is an argument).

`decide(request, view, now)` returns the node to try and the ordered fallbacks. The same
code runs inside the gateway and inside the cluster simulator.
"""

from ollamamax.scheduler.decide import Scheduler
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.view import ClusterView, NodeState

__all__ = ["ClusterView", "Decision", "NodeState", "RouteRequest", "Scheduler"]
