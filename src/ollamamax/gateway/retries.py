"""How many retries and hedges the gateway may add, and when a hedge is due (pure).

Retries do not make things worse: a cluster in trouble that answered every failure with one
more request would double its own load exactly when it can least take it. `RetryBudget`
allows extra attempts (retries and hedges) of at most `ratio` of the requests of the last
`window` seconds (Envoy's budget is 20% of active requests), and always `minimum` per window,
so a lone request on a quiet gateway may still retry.

`AnswerTimes` keeps the recent answer times of whole (non-streamed) answers per node and
model: a hedge is sent when the first node has not answered by its 95th percentile.

No clock: the caller passes `now` (any monotonic seconds).
"""

from __future__ import annotations

import math
from collections import deque


class RetryBudget:
    """Two half-window buckets: the sum of both approximates a sliding window."""

    __slots__ = (
        "_end",
        "_half",
        "_req",
        "_req_prev",
        "_ret",
        "_ret_prev",
        "exceeded",
        "minimum",
        "ratio",
    )

    def __init__(self, ratio: float = 0.2, minimum: int = 10, window: float = 10.0) -> None:
        if ratio < 0 or minimum < 0 or window <= 0:
            raise ValueError("retry budget: ratio and minimum must be >= 0, window > 0")
        self.ratio = ratio
        self.minimum = minimum
        self._half = window / 2
        self._end = -math.inf
        self._req = self._req_prev = 0
        self._ret = self._ret_prev = 0
        self.exceeded = 0  # retries refused, ever

    def request(self, now: float) -> None:
        """One more client request (the hot path: a comparison and an addition)."""
        if now >= self._end:
            self._roll(now)
        self._req += 1

    def spend(self, now: float) -> bool:
        """Take one extra attempt from the budget; False (and counted) when it is spent."""
        if now >= self._end:
            self._roll(now)
        if self._ret + self._ret_prev + 1 > self.allowed():
            self.exceeded += 1
            return False
        self._ret += 1
        return True

    def allowed(self) -> float:
        return max(float(self.minimum), self.ratio * (self._req + self._req_prev))

    def _roll(self, now: float) -> None:
        if now < self._end + self._half:  # one half-window passed: the current becomes previous
            self._req_prev, self._ret_prev = self._req, self._ret
            self._end += self._half
        else:  # longer: both are old
            self._req_prev = self._ret_prev = 0
            self._end = now + self._half
        self._req = self._ret = 0


class AnswerTimes:
    """Recent whole-answer times per (node, model) and per model; their 95th percentile."""

    def __init__(self, keep: int = 64, min_samples: int = 8) -> None:
        self.keep = keep
        self.min_samples = min_samples
        self._by_node: dict[tuple[int, int], deque[float]] = {}
        self._by_model: dict[int, deque[float]] = {}

    def record(self, node: int, model: int, seconds: float) -> None:
        for table, key in ((self._by_node, (node, model)), (self._by_model, model)):
            window = table.get(key)  # type: ignore[call-overload]
            if window is None:
                window = table[key] = deque(maxlen=self.keep)  # type: ignore[index]
            window.append(seconds)

    def p95(self, node: int, model: int) -> float | None:
        """The node's p95 for the model; the model's over all nodes while the node has too
        few samples; None while the model has too few too."""
        for window in (self._by_node.get((node, model)), self._by_model.get(model)):
            if window is not None and len(window) >= self.min_samples:
                ordered = sorted(window)
                return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
        return None
