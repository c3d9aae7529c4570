"""The gateway's picture of the cluster, updated by health checks and request outcomes.

Routing v0 keeps one small mutable record per node; the cluster-scale view (arrays updated in
place, a constraint index) replaces it behind the same methods.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(slots=True)
class NodeState:
    id: str
    url: str
    healthy: bool = False  # unknown until the first check answers
    models: frozenset[str] = frozenset()  # model keys the node can serve
    loaded: frozenset[str] = frozenset()  # model keys resident now
    in_flight: int = 0  # requests this gateway has sent and not seen finish
    served: int = 0  # requests this gateway has sent in all (spreads ties)
    queue_depth: int = 0
    last_error: str = ""
    updated_at: float = 0.0
    info: dict[str, object] = field(default_factory=dict)  # last telemetry document


class ClusterView:
    def __init__(self) -> None:
        self.nodes: dict[str, NodeState] = {}

    # -- membership ------------------------------------------------------------------------

    def add(self, node_id: str, url: str) -> NodeState:
        state = self.nodes.get(node_id)
        if state is None:
            state = self.nodes[node_id] = NodeState(node_id, url)
        state.url = url
        return state

    def remove(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)

    # -- telemetry and outcomes ------------------------------------------------------------

    def set_health(self, node_id: str, healthy: bool, now: float, error: str = "") -> bool:
        """Record a health verdict; True when it changed."""
        state = self.nodes[node_id]
        changed = state.healthy != healthy
        state.healthy = healthy
        state.last_error = error
        state.updated_at = now
        return changed

    def set_models(self, node_id: str, models: Iterable[str], loaded: Iterable[str],
                   queue_depth: int = 0) -> None:
        state = self.nodes[node_id]
        state.models = frozenset(models)
        state.loaded = frozenset(loaded)
        state.queue_depth = queue_depth

    def started(self, node_id: str) -> None:
        state = self.nodes.get(node_id)
        if state is not None:
            state.in_flight += 1
            state.served += 1

    def finished(self, node_id: str, model: str, ok: bool) -> None:
        state = self.nodes.get(node_id)
        if state is None:
            return
        state.in_flight = max(0, state.in_flight - 1)
        if ok:
            # Ollama loads a model to answer it: the node has it resident now.
            state.loaded = state.loaded | {model}
            state.models = state.models | {model}

    # -- queries ---------------------------------------------------------------------------

    def with_model(self, model: str) -> list[NodeState]:
        return [n for n in self.nodes.values() if model in n.models]

    def all_models(self) -> set[str]:
        return set().union(*(n.models for n in self.nodes.values())) if self.nodes else set()
