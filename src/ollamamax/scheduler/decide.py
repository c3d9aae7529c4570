"""From a request and the cluster view to a `Decision`: candidates, then the strategy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ollamamax.errors import ModelNotFound, Unavailable
from ollamamax.scheduler import strategies
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.view import ClusterView


class Candidates:
    """The nodes that may take a request, computed only as far as a strategy asks.

    Normally: routable nodes (present, healthy, not draining) that have the model and carry
    the request's labels. In panic (no routable node has the model) every present holder is
    a candidate: trying a node that may be back beats refusing for sure. `plain` says no label
    filter and no panic apply, so a strategy with its own per-model arrays may use them as is.
    """

    __slots__ = ("_indices", "_mask", "extra", "model", "panic", "view")

    def __init__(self, view: ClusterView, model: int, extra: np.ndarray | None, panic: bool):
        self.view = view
        self.model = model
        self.extra = extra
        self.panic = panic
        self._mask: np.ndarray | None = None
        self._indices: np.ndarray | None = None

    @property
    def plain(self) -> bool:
        return self.extra is None and not self.panic

    @property
    def mask(self) -> np.ndarray:
        """Boolean array over all node slots (length `view.capacity`)."""
        if self._mask is None:
            v = self.view
            mask = v.has[self.model] & (v.present if self.panic else v.routable)
            if self.extra is not None:
                mask &= self.extra
            self._mask = mask
        return self._mask

    @property
    def indices(self) -> np.ndarray:
        """Node numbers, ascending."""
        if self._indices is None:
            self._indices = np.flatnonzero(self.mask[: self.view.n])
        return self._indices

    def __len__(self) -> int:
        if self.plain:
            return self.view.routable_holders[self.model]
        return len(self.indices)


LabelMask = Callable[[ClusterView, frozenset[str], frozenset[str]], "np.ndarray | None"]


class Scheduler:
    def __init__(self, strategy: str | Any = "intelligent", *, seed: int = 0,
                 label_mask: LabelMask = ClusterView.label_mask) -> None:
        self.strategy = strategies.create(strategy, seed=seed) if isinstance(strategy, str) \
            else strategy
        # the constraint filter: the view's label index, or the catalogue's nested-loop
        # baseline (`scheduler.constraints`, flag `scheduler.constraints`)
        self.label_mask = label_mask
        self._bound: ClusterView | None = None

    @property
    def name(self) -> str:
        return str(self.strategy.name)

    def decide(self, request: RouteRequest, view: ClusterView, now: float) -> Decision:
        """The nodes to try for `request`, best first.

        `ModelNotFound` when no node has the model; `Unavailable` when nodes have it but none
        carries the required labels.
        """
        if self._bound is not view:
            self.bind(view)
        m = view.model_index.get(request.model)
        if m is None or view.holders[m] == 0:
            raise ModelNotFound(request.model)
        extra = self.label_mask(view, request.require, request.exclude)
        candidates = Candidates(view, m, extra, panic=view.routable_holders[m] == 0)
        if extra is None and candidates.panic and len(candidates) == 0:
            raise Unavailable(f"every node with model '{request.model}' has left the cluster")
        if extra is not None and len(candidates) == 0:
            raise Unavailable(f"no node with model '{request.model}' matches the labels "
                              f"required {sorted(request.require)} / excluded "
                              f"{sorted(request.exclude)}")
        decision = self.strategy.choose(request, candidates, view, now)
        if candidates.panic:
            return Decision(decision.node, decision.rest,
                            "panic: every node with the model is down; " + decision.reason)
        return decision

    def bind(self, view: ClusterView) -> None:
        """Prepare the strategy for `view` (done by the first decision if not before)."""
        bind = getattr(self.strategy, "bind", None)
        if bind is not None:
            bind(view)
        self._bound = view
