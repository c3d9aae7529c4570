"""How many requests each model will get: a trend-aware forecast from recent arrivals.

Per model, arrivals are counted in buckets of `bucket_s` seconds and smoothed with Holt's
double exponential smoothing (a level and a trend, both in requests per second):

    level' = alpha x + (1 - alpha) (level + trend)        x: the last bucket's rate
    trend' = beta (level' - level) + (1 - beta) trend

and the rate `ahead_s` seconds from now is ``level + trend x ahead_s / bucket_s`` (never below
zero). A model whose demand is rising is forecast above its recent mean, so the prewarmer
loads it before the requests come; one falling out of favour is forecast below. Pure: time is
an argument, and buckets with no arrivals count as zero whenever the model is next touched.
"""

from __future__ import annotations

import math

MAX_EMPTY_BUCKETS = 64  # after this many silent buckets the model's level and trend are ~0


class DemandForecast:
    def __init__(self, bucket_s: float = 10.0, alpha: float = 0.5, beta: float = 0.3) -> None:
        if bucket_s <= 0 or not (0 < alpha <= 1) or not (0 <= beta <= 1):
            raise ValueError("bucket_s > 0, 0 < alpha <= 1 and 0 <= beta <= 1")
        self.bucket_s, self.alpha, self.beta = bucket_s, alpha, beta
        self._level: list[float] = []
        self._trend: list[float] = []
        self._count: list[int] = []  # arrivals in the bucket in progress
        self._bucket: list[int] = []  # which bucket that is (-1: none seen yet)
        self._seeded: list[bool] = []  # a bucket was closed: level and trend mean something

    def observe(self, model: int, now: float, count: int = 1) -> None:
        """`count` requests for `model` arrived at `now`."""
        self._roll(model, now)
        self._count[model] += count

    def rate(self, model: int, now: float, ahead_s: float = 0.0) -> float:
        """Forecast requests per second for `model`, `ahead_s` seconds after `now`."""
        if model >= len(self._level) or self._bucket[model] < 0:
            return 0.0
        self._roll(model, now)
        return max(0.0, self._level[model] + self._trend[model] * ahead_s / self.bucket_s)

    def models(self) -> range:
        """Every model number ever observed (and those below it)."""
        return range(len(self._level))

    def _roll(self, model: int, now: float) -> None:
        while model >= len(self._level):
            self._level.append(0.0)
            self._trend.append(0.0)
            self._count.append(0)
            self._bucket.append(-1)
            self._seeded.append(False)
        bucket = math.floor(now / self.bucket_s)
        last = self._bucket[model]
        if last < 0:
            self._bucket[model] = bucket
            return
        if bucket <= last:
            return
        a, b = self.alpha, self.beta
        level, trend = self._level[model], self._trend[model]
        x = self._count[model] / self.bucket_s
        for k in range(min(bucket - last, MAX_EMPTY_BUCKETS)):
            if k:
                x = 0.0  # the buckets after the one just closed had no arrivals
            if not self._seeded[model]:  # Holt's start: the first rate seen, no trend
                self._seeded[model] = True
                level, trend = x, 0.0
                continue
            new = a * x + (1 - a) * (level + trend)
            trend = b * (new - level) + (1 - b) * trend
            level = new
        if bucket - last > MAX_EMPTY_BUCKETS:
            level = trend = 0.0
        self._level[model], self._trend[model] = level, trend
        self._count[model] = 0
        self._bucket[model] = bucket
