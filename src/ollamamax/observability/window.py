"""Sliding-window percentiles and short time series, in bounded memory.

`WindowedQuantiles` answers "p50/p95/p99 of what was recorded in the last W seconds" however
many values arrived: each value lands in a log-spaced bucket (4 % wide by default, so a
quantile is within 2 % of the true value) of the time slot it arrived in (1 s by default).
Memory is at most slots x buckets counters (in practice a few dozen buckets per slot), and
recording is O(1): a logarithm, a slot check and a dict increment. A query merges the slots
inside the window, O(slots x buckets in use).

`Series` keeps the last N points of a value sampled once a tick, for charts.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable


class WindowedQuantiles:
    def __init__(self, window: float = 60.0, slot: float = 1.0, *, lowest: float = 1e-6,
                 growth: float = 1.04) -> None:
        if window <= 0 or slot <= 0 or lowest <= 0 or growth <= 1:
            raise ValueError("window, slot and lowest must be > 0 and growth > 1")
        self.window, self.slot, self.lowest, self.growth = window, slot, lowest, growth
        self._log_growth = math.log(growth)
        self._log_lowest = math.log(lowest)
        self._n = math.ceil(window / slot) + 1  # the current slot, partly filled, and W full ones
        self._slot_ids = [-1] * self._n
        self._counts: list[dict[int, int]] = [{} for _ in range(self._n)]

    def record(self, now: float, value: float) -> None:
        s = int(now // self.slot)
        i = s % self._n
        if self._slot_ids[i] != s:
            self._slot_ids[i] = s
            self._counts[i] = {}
        counts = self._counts[i]
        b = self._bucket(value)
        counts[b] = counts.get(b, 0) + 1

    def _bucket(self, value: float) -> int:
        """0 for values <= `lowest` (zero included); else 1 + the log-spaced step."""
        if value <= self.lowest:
            return 0
        return 1 + int((math.log(value) - self._log_lowest) / self._log_growth)

    def _value(self, b: int) -> float:
        """A bucket's representative: the geometric middle of its bounds (0 for bucket 0)."""
        if b == 0:
            return 0.0
        return math.exp(self._log_lowest + (b - 0.5) * self._log_growth)

    def merged(self, now: float, window: float | None = None) -> dict[int, int]:
        """Bucket counts over the slots that began within `window` seconds before `now`."""
        s = int(now // self.slot)
        k = min(self._n, max(1, math.ceil((window or self.window) / self.slot)))
        merged: dict[int, int] = {}
        for sid in range(s - k + 1, s + 1):
            i = sid % self._n
            if self._slot_ids[i] != sid:
                continue
            for b, n in self._counts[i].items():
                merged[b] = merged.get(b, 0) + n
        return merged

    def count(self, now: float, window: float | None = None) -> int:
        return sum(self.merged(now, window).values())

    def quantiles(self, now: float, qs: Iterable[float] = (0.5, 0.95, 0.99),
                  window: float | None = None) -> dict[float, float] | None:
        """``{q: value}`` for each quantile q in 0..1 (nearest rank), None with no values."""
        merged = self.merged(now, window)
        total = sum(merged.values())
        if not total:
            return None
        order = sorted(merged.items())
        out = {}
        for q in qs:
            rank = max(1, math.ceil(q * total))
            seen = 0
            for b, n in order:
                seen += n
                if seen >= rank:
                    out[q] = self._value(b)
                    break
        return out


class Series:
    """The last `capacity` (time, value) points; None values are gaps."""

    def __init__(self, capacity: int = 300) -> None:
        self.times: deque[float] = deque(maxlen=capacity)
        self.values: deque[float | None] = deque(maxlen=capacity)

    def add(self, t: float, value: float | None) -> None:
        self.times.append(t)
        self.values.append(value)

    def last(self) -> float | None:
        return self.values[-1] if self.values else None


class Cumulative:
    """(time, running total) samples over a window, for rates: ``rate(now)`` is the growth
    per second between the oldest sample within `window` and the newest."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.samples: deque[tuple[float, float]] = deque()

    def add(self, t: float, total: float) -> None:
        self.samples.append((t, total))
        while len(self.samples) > 2 and t - self.samples[1][0] >= self.window:
            self.samples.popleft()

    def growth(self) -> tuple[float, float]:
        """(seconds spanned, growth of the total) over the window."""
        if len(self.samples) < 2:
            return 0.0, 0.0
        (t0, v0), (t1, v1) = self.samples[0], self.samples[-1]
        return t1 - t0, v1 - v0

    def rate(self) -> float | None:
        span, grown = self.growth()
        return grown / span if span > 0 else None
