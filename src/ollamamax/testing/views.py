"""Cluster views for tests and benchmarks, one `NodeSpec` per node.

    view = build_view([NodeSpec(loaded={"m:7b": 2}, busy={"m:7b": 1}),
                       NodeSpec(models=("m:7b",), healthy=False)])

Nodes are named ``n0, n1, ...`` in order, so node number k is ``n{k}``. The telemetry report
(`reported_busy`, `queued`) is applied first, then the requests this gateway keeps busy go
through `view.started`, as the router does, so `in_flight`, `served` and the per-model `busy`
counts agree and the report counts other gateways' requests only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ollamamax.scheduler.view import ClusterView, LoadedModel


@dataclass(frozen=True)
class NodeSpec:
    models: tuple[str, ...] = ()  # models on disk (not loaded)
    loaded: Mapping[str, int] = field(default_factory=dict)  # loaded model -> slots
    busy: Mapping[str, int] = field(default_factory=dict)  # model -> requests started here
    reported_busy: Mapping[str, int] = field(default_factory=dict)  # model -> node's report
    queued: Mapping[str, int] = field(default_factory=dict)  # model -> waiting, node's report
    healthy: bool = True
    draining: bool = False
    present: bool = True
    labels: tuple[str, ...] = ()
    queue: int = 0  # node-wide queue depth
    mem_free: int | None = None
    mem_total: int = 0
    speed: float = 1.0


def build_view(nodes: Sequence[NodeSpec], *, capacity: int = 4,
               sizes: Mapping[str, int] | None = None, now: float = 0.0) -> ClusterView:
    """A view holding `nodes`; `sizes` gives model sizes in bytes (default 0)."""
    sizes = sizes or {}
    view = ClusterView(capacity)
    for k, spec in enumerate(nodes):
        _add(view, f"n{k}", spec, sizes, now)
    for k, spec in enumerate(nodes):
        if not spec.present:
            view.remove(f"n{k}")
    return view


def _add(view: ClusterView, node_id: str, spec: NodeSpec, sizes: Mapping[str, int],
         now: float) -> int:
    i = view.add(node_id, f"http://{node_id}", labels=spec.labels, mem_total=spec.mem_total,
                 speed=spec.speed)
    view.set_health(i, spec.healthy, now)
    resident = [LoadedModel(m, slots=slots, busy=spec.reported_busy.get(m, 0),
                            queued=spec.queued.get(m, 0), size=sizes.get(m, 0))
                for m, slots in spec.loaded.items()]
    view.update(i, models=[(m, sizes.get(m, 0)) for m in spec.models], loaded=resident,
                queue_depth=spec.queue, mem_free=spec.mem_free, now=now)
    view.set_draining(i, spec.draining)
    for model, count in spec.busy.items():
        m = view.ensure_model(model, sizes.get(model, 0))
        for _ in range(count):
            view.started(i, m)
    return i
