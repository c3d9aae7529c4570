"""A token bucket: a rate with a burst, time passed in (shared by API-key limits and transfers).

`rate` tokens are added per second up to `burst`; `take(n, now)` spends `n` if it can and
otherwise says how long until it could. Time is an argument, never read from a clock, so
the same bucket runs under the event loop and in tests with a fake clock.
"""

from __future__ import annotations

import math


class TokenBucket:
    __slots__ = ("burst", "level", "rate", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a token bucket needs rate > 0 and burst > 0")
        self.rate, self.burst = float(rate), float(burst)
        self.level, self.stamp = float(burst), now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def available(self, now: float) -> float:
        self._refill(now)
        return self.level

    def take(self, n: float, now: float) -> float:
        """Spend `n` tokens and return 0.0, or spend nothing and return the seconds to wait.

        A request larger than the burst can never fit: it waits for `math.inf`.
        """
        self._refill(now)
        if n <= self.level:
            self.level -= n
            return 0.0
        if n > self.burst:
            return math.inf
        return (n - self.level) / self.rate

    def spend(self, n: float, now: float) -> float:
        """Spend `n` tokens even into debt (bytes already sent); return the seconds until the
        level is back to zero (0.0 when no debt). A pacing loop sleeps that long."""
        self._refill(now)
        self.level -= n
        return 0.0 if self.level >= 0 else -self.level / self.rate
