"""The optimisation catalogue's "before" implementations of scheduler parts, kept as baselines.

Each has the interface of its optimised twin, is chosen by a flag (``variants.py``), is
property-tested equal to the twin (tests/unit/scheduler/test_baselines.py) and is measured
against it by ``ollamamax bench catalog``:

- `ListHistory`, a list of rows scanned in Python, twin of `history.TaskHistory`, a numpy
  ring buffer (flag ``scheduler.history``);
- `RecomputingIntelligent`, weights recomputed per selection, twin of `Intelligent`, whose
  weights the view's events keep current (flag ``scheduler.weights``).

(The queue's pair lives in `ordering.py`, the constraint filters in `constraints.py`, the
variance pair in `stats.py`.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ollamamax.scheduler.decide import Candidates
from ollamamax.scheduler.history import _COLUMNS, OUTCOMES, TaskHistory
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.strategies.intelligent import Intelligent
from ollamamax.scheduler.view import ClusterView

COLUMNS = tuple(_COLUMNS)  # row layout of `ListHistory`
_INDEX = {name: k for k, name in enumerate(COLUMNS)}

# -- task history ----------------------------------------------------------------------------


class ListHistory:
    """`TaskHistory`'s interface over a Python list of row tuples, the catalogue's slice.

    Appending to a full history drops the oldest row from the front of the list (O(n), a
    memmove); a query scans every row in Python, then sorts the matches for percentiles.
    """

    def __init__(self, capacity: int = 65536) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.rows: list[tuple[Any, ...]] = []
        self.total = 0

    @property
    def count(self) -> int:
        return len(self.rows)

    def append(self, *, time: float, node: int, model: int, prompt_tokens: int = 0,
               output_tokens: int = 0, ttft: float = 0.0, duration: float = 0.0,
               outcome: str = "ok") -> None:
        if len(self.rows) >= self.capacity:
            del self.rows[0]
        self.rows.append((float(time), int(node), int(model), int(prompt_tokens),
                          int(output_tokens), float(ttft), float(duration), OUTCOMES[outcome]))
        self.total += 1

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, column: str, *, node: int | None = None, model: int | None = None,
               since: float | None = None, outcome: str | None = "ok") -> np.ndarray:
        """The values of `column` for rows matching every filter given, oldest first."""
        k = _INDEX[column]
        code = None if outcome is None else OUTCOMES[outcome]
        out = []
        for row in self.rows:
            if node is not None and row[1] != node:
                continue
            if model is not None and row[2] != model:
                continue
            if since is not None and row[0] < since:
                continue
            if code is not None and row[7] != code:
                continue
            out.append(row[k])
        return np.array(out, dtype=_COLUMNS[column])

    def percentiles(self, column: str, qs: tuple[float, ...] = (50, 95, 99),
                    **filters: Any) -> dict[float, float] | None:
        """``{q: value}`` over matching rows (linear interpolation, as numpy's default)."""
        values = sorted(self.select(column, **filters).tolist())
        if not values:
            return None
        return {q: _interpolated(values, q) for q in qs}


def _interpolated(ordered: list[float], q: float) -> float:
    h = (len(ordered) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo]))


def _ring_rows(history: TaskHistory) -> list[tuple[Any, ...]]:
    """The ring's rows as `ListHistory` tuples, oldest first."""
    start = history.next if history.count == history.capacity else 0
    order = np.roll(np.arange(history.count), -start) if start else np.arange(history.count)
    return list(zip(*(history.columns[name][order].tolist() for name in COLUMNS), strict=True))


def history_rows(history: TaskHistory | ListHistory) -> Iterator[dict[str, Any]]:
    """Every row of either history, oldest first, as `append` keyword arguments."""
    outcome_names = {code: name for name, code in OUTCOMES.items()}
    rows = history.rows if isinstance(history, ListHistory) else _ring_rows(history)
    for row in rows:
        record = dict(zip(COLUMNS, row, strict=True))
        record["outcome"] = outcome_names[record["outcome"]]
        yield record


def moved_history(history: TaskHistory | ListHistory, variant: str) -> TaskHistory | ListHistory:
    """`history`'s rows in a new history of kind `variant` (``ring`` or ``list``), in bulk
    (a switch at run time: 65,536 rows take tens of milliseconds, not a row at a time)."""
    rows = history.rows if isinstance(history, ListHistory) else _ring_rows(history)
    rows = rows[-history.capacity:]
    if variant == "list":
        new_list = ListHistory(history.capacity)
        new_list.rows = list(rows)
        new_list.total = history.total
        return new_list
    ring = TaskHistory(history.capacity)
    for k, name in enumerate(COLUMNS):
        ring.columns[name][: len(rows)] = [row[k] for row in rows]
    ring.count, ring.next, ring.total = len(rows), len(rows) % history.capacity, history.total
    return ring


# -- weights ---------------------------------------------------------------------------------


class RecomputingIntelligent(Intelligent):
    """`intelligent` with every node's weights for the request's model recomputed on every
    selection, the catalogue's "weight recalculation on every selection" (O(n) Python per
    decision), instead of kept current by the view's events (O(1) per change).

    It uses only the view-listener protocol of `Intelligent` (`cell_changed`, `model_added`,
    `resized`), called for every node at each decision instead of by the view.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._models = 0
        self._capacity = 0

    def bind(self, view: ClusterView) -> None:
        super().bind(view)
        view.listeners.remove(self)  # no upkeep between decisions: that is the point
        self._models, self._capacity = len(view.model_names), view.capacity

    def recompute(self, view: ClusterView, m: int) -> None:
        if view.capacity != self._capacity:
            self.resized(view)
            self._capacity = view.capacity
        while self._models < len(view.model_names):
            self.model_added(view, self._models)
            self._models += 1
        for i in range(view.n):
            self.cell_changed(view, i, m)

    def choose(self, request: RouteRequest, candidates: Candidates, view: ClusterView,
               now: float) -> Decision:
        m = candidates.model
        self.recompute(view, m)
        decision = super().choose(request, candidates, view, now)
        rest = decision.rest
        if callable(rest):  # fallbacks are ranked later, from weights recomputed then
            decision.rest = lambda: (self.recompute(view, m), rest())[1]
        return decision
