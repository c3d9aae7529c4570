"""What the scheduler is asked and what it answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Priority classes, most urgent first (a header or an API key's default picks one).
PRIORITIES = {"interactive": 0, "default": 1, "batch": 2}


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """A request's metadata, as much as routing needs (never the HTTP request itself)."""

    model: str  # canonical model key, e.g. "smollm2:135m"
    endpoint: str = "chat"  # chat | generate | embed | embeddings | show
    stream: bool = True
    prompt_tokens: int = 0  # estimated
    output_tokens: int = 0  # expected (num_predict), 0 when unknown
    prefix: tuple[int, ...] = ()  # chained hashes of the prompt's blocks (`scheduler.prefix`)
    priority: int = 1  # PRIORITIES value
    key: str = ""  # who asks (an API key's id): fairness and quotas
    deadline: float | None = None  # absolute time by which it should start, if any
    require: frozenset[str] = frozenset()  # node labels it needs, "k=v"
    exclude: frozenset[str] = frozenset()  # node labels it must avoid


class Decision:
    """The node to try first and, on demand, the ordered fallbacks.

    Fallbacks are needed only when the first node fails, so strategies may compute them
    lazily (`rest` is then a function, called at most once, when first asked: from the view
    as it is after the failure, which is fresher than the decision's).
    `wait` says the chosen node cannot start the request now (every slot busy): a gateway with
    an admission queue holds it until a slot frees instead of sending it to wait in a node.
    (A plain class: a frozen dataclass cost more to build than the rest of a decision.)
    """

    __slots__ = ("_fallbacks", "node", "reason", "rest", "wait")

    def __init__(self, node: int, rest: tuple[int, ...] | Callable[[], tuple[int, ...]] = (),
                 reason: str = "", wait: bool = False) -> None:
        self.node = node
        self.rest = rest
        self.reason = reason
        self.wait = wait
        self._fallbacks: tuple[int, ...] | None = None

    def fallbacks(self) -> tuple[int, ...]:
        if self._fallbacks is None:
            rest = self.rest() if callable(self.rest) else self.rest
            self._fallbacks = tuple(i for i in rest if i != self.node)
        return self._fallbacks

    def ordered(self) -> tuple[int, ...]:
        """The first node, then the fallbacks."""
        return () if self.node < 0 else (self.node, *self.fallbacks())

    def __repr__(self) -> str:
        return f"Decision(node={self.node}, reason={self.reason!r}, wait={self.wait})"
