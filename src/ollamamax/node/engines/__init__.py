"""Node engines, one module each, chosen by name (``ollamamax node --engine NAME``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ollamamax import registry

if TYPE_CHECKING:
    from ollamamax.config import NodeConfig
    from ollamamax.node.engines.base import Engine

ENGINES = {
    "llamacpp": "ollamamax.node.engines.llamacpp:LlamaCppEngine",
    "ollama": "ollamamax.node.engines.ollama:OllamaEngine",
    "sim": "ollamamax.node.engines.sim:SimEngine",
}


def create(config: NodeConfig) -> Engine:
    cls = registry.load("engine", ENGINES, config.engine)
    return cls(config)
