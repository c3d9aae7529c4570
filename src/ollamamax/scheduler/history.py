"""A fixed-size ring buffer of finished requests, with O(1) append and fast percentiles.

Columns are numpy arrays of one capacity; the newest rows overwrite the oldest. Percentile
queries run on the filled part (`np.percentile` partitions, O(n)), optionally filtered by
node, model or time window.
"""

from __future__ import annotations

from typing import Any

import numpy as np

OUTCOMES = {"ok": 0, "error": 1, "cancelled": 2}

_COLUMNS: dict[str, Any] = {
    "time": np.float64, "node": np.int32, "model": np.int32, "prompt_tokens": np.int32,
    "output_tokens": np.int32, "ttft": np.float64, "duration": np.float64, "outcome": np.int8,
}


class TaskHistory:
    def __init__(self, capacity: int = 65536) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.columns = {name: np.zeros(capacity, dtype) for name, dtype in _COLUMNS.items()}
        self.next = 0  # where the next row goes
        self.count = 0  # rows held (<= capacity)
        self.total = 0  # rows ever appended

    def append(self, *, time: float, node: int, model: int, prompt_tokens: int = 0,
               output_tokens: int = 0, ttft: float = 0.0, duration: float = 0.0,
               outcome: str = "ok") -> None:
        i = self.next
        c = self.columns
        c["time"][i] = time
        c["node"][i] = node
        c["model"][i] = model
        c["prompt_tokens"][i] = prompt_tokens
        c["output_tokens"][i] = output_tokens
        c["ttft"][i] = ttft
        c["duration"][i] = duration
        c["outcome"][i] = OUTCOMES[outcome]
        self.next = (i + 1) % self.capacity
        self.count = min(self.count + 1, self.capacity)
        self.total += 1

    def __len__(self) -> int:
        return self.count

    def select(self, column: str, *, node: int | None = None, model: int | None = None,
               since: float | None = None, outcome: str | None = "ok") -> np.ndarray:
        """The values of `column` for rows matching every filter given."""
        rows = self.count
        values = self.columns[column][:rows]
        mask = np.ones(rows, np.bool_)
        if node is not None:
            mask &= self.columns["node"][:rows] == node
        if model is not None:
            mask &= self.columns["model"][:rows] == model
        if since is not None:
            mask &= self.columns["time"][:rows] >= since
        if outcome is not None:
            mask &= self.columns["outcome"][:rows] == OUTCOMES[outcome]
        return values[mask]

    def percentiles(self, column: str, qs: tuple[float, ...] = (50, 95, 99),
                    **filters: Any) -> dict[float, float] | None:
        """``{q: value}`` over matching rows, or None when there are none."""
        values = self.select(column, **filters)
        if values.size == 0:
            return None
        return dict(zip(qs, (float(v) for v in np.percentile(values, qs)), strict=True))
