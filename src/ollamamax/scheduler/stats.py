"""Running mean and variance of a stream of numbers (a node's latencies, a link's speed).

Two implementations behind one interface, chosen by name (flag ``scheduler.variance``):

- ``welford`` (default): Welford's single pass, O(1) memory and O(1) per value and query;
  numerically stable (no sum of squares to cancel).
- ``two_pass``: the catalogue's "before": keep every value, and on each query walk them
  twice (the mean, then the squared deviations): O(n) per query, O(n) memory.

`variance` is the sample variance (n - 1 in the denominator), 0.0 below two values. No
routing strategy reads a variance today (ours rank by expected time to first token); the
catalogue's load balancer did, and this pair is what a strategy that wants one uses.
"""

from __future__ import annotations

import math


class WelfordStats:
    __slots__ = ("_m2", "count", "mean")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0

    def add(self, x: float) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (x - self.mean)

    @property
    def variance(self) -> float:
        return self._m2 / (self.count - 1) if self.count > 1 else 0.0

    @property
    def stdev(self) -> float:
        return math.sqrt(self.variance)


class TwoPassStats:
    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[float] = []

    def add(self, x: float) -> None:
        self.values.append(x)

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        total = 0.0
        for x in self.values:
            total += x
        return total / len(self.values) if self.values else 0.0

    @property
    def variance(self) -> float:
        n = len(self.values)
        if n < 2:
            return 0.0
        mean = self.mean  # first pass
        squares = 0.0
        for x in self.values:  # second pass
            squares += (x - mean) ** 2
        return squares / (n - 1)

    @property
    def stdev(self) -> float:
        return math.sqrt(self.variance)


VARIANCES = {
    "welford": "ollamamax.scheduler.stats:WelfordStats",
    "two_pass": "ollamamax.scheduler.stats:TwoPassStats",
}
