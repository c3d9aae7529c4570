"""Per-model arrays of numbers derived from the (node, model) performance profiles.

A strategy that ranks nodes by something in their profiles (LiteLLM's mean latency, SOLLOL's
success rate) would otherwise look up one profile per candidate and decision: a Python loop
over thousands of nodes. `ProfileColumns` keeps one array per model and column instead and
re-reads a single profile when the view says its cell changed.

That works because `Router.finished` records the profile first and then calls
`view.finished`, whose `cell_changed` reaches us. A profile recorded without any change to its
view cell (or dropped by the profiles' LRU) is seen at the cell's next change.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ollamamax.scheduler.profiles import Profile
from ollamamax.scheduler.view import ClusterView

Column = tuple[float, Callable[[Profile], float]]  # (value without a profile, value from one)


class ProfileColumns:
    def __init__(self, **columns: Column) -> None:
        self.columns = columns
        self.view: ClusterView | None = None
        self.arrays: dict[str, list[np.ndarray]] = {name: [] for name in columns}

    def get(self, name: str, model: int) -> np.ndarray:
        """The column over every node slot for `model` (read only)."""
        return self.arrays[name][model]

    def ensure_bound(self, view: ClusterView) -> None:
        if self.view is not view:
            self.bind(view)

    def bind(self, view: ClusterView) -> None:
        self.view = view
        self.arrays = {name: [] for name in self.columns}
        for m in range(len(view.model_names)):
            self.model_added(view, m)
        view.subscribe(self)

    # -- view listener ---------------------------------------------------------------------

    def model_added(self, view: ClusterView, model: int) -> None:
        if view is not self.view:
            return
        for name, (default, _) in self.columns.items():
            self.arrays[name].append(np.full(view.capacity, default))
        for i in range(view.n):
            self._refresh(view, i, model)

    def resized(self, view: ClusterView) -> None:
        if view is not self.view:
            return
        for name, (default, _) in self.columns.items():
            self.arrays[name] = [_grown(a, view.capacity, default) for a in self.arrays[name]]

    def node_changed(self, view: ClusterView, node: int) -> None:
        """Nothing node-wide is in a profile."""

    def cell_changed(self, view: ClusterView, node: int, model: int) -> None:
        if view is self.view:
            self._refresh(view, node, model)

    def _refresh(self, view: ClusterView, node: int, model: int) -> None:
        profile = view.profiles.get(node, model)
        for name, (default, value) in self.columns.items():
            self.arrays[name][model][node] = default if profile is None else value(profile)


def _grown(a: np.ndarray, capacity: int, fill: float) -> np.ndarray:
    out = np.full(capacity, fill)
    out[: len(a)] = a
    return out
