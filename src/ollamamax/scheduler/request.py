"""What the scheduler is asked and what it answers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """A request's metadata, as much as routing needs (never the HTTP request itself)."""

    model: str  # canonical model key, e.g. "smollm2:135m"
    endpoint: str = "chat"  # chat | generate | embed | show
    stream: bool = True


@dataclass(frozen=True, slots=True)
class Decision:
    """Nodes to try in order: the first is the choice, the rest are fallbacks."""

    nodes: tuple[str, ...]
    reason: str = ""

    @property
    def node(self) -> str | None:
        return self.nodes[0] if self.nodes else None
