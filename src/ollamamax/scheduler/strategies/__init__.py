"""Routing strategies, one module each, chosen by name (``scheduler.strategy``).

Every strategy is pure and synchronous: ``choose(request, candidates, view, now) -> Decision``,
with `candidates` the nodes that may take the request (healthy, with the model), never empty.
"""

from __future__ import annotations

from typing import Any

from ollamamax import registry

STRATEGIES = {
    "loaded_least_busy": "ollamamax.scheduler.strategies.loaded_least_busy:LoadedLeastBusy",
}


def create(name: str) -> Any:
    return registry.load("strategy", STRATEGIES, name)()
