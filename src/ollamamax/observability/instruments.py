"""Counters and histograms recorded in O(1) with no lock, read by Prometheus at scrape time.

prometheus_client's own `Counter.inc` and `Histogram.observe` take a lock each and
`Histogram.observe` walks its buckets linearly; the gateway and node run on one event loop,
so plain integers in a dict are safe and cheaper. `collect()` turns them into metric
families when ``/metrics`` is scraped (the collector protocol of prometheus_client).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

Key = tuple[str, ...]


class FastCounter:
    """A labelled counter: ``inc(("node-1", "m:1b"))``; a key has one value per label."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (),
                 preset: Iterable[Key] = ()) -> None:
        self.name, self.help, self.labels = name, help_text, list(labels)
        self.values: dict[Key, float] = dict.fromkeys(preset, 0)

    def inc(self, key: Key = (), amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount

    def value(self, key: Key = ()) -> float:
        return self.values.get(key, 0)

    def total(self) -> float:
        return sum(self.values.values())

    def collect(self) -> list[Metric]:
        family = CounterMetricFamily(self.name, self.help, labels=self.labels)
        for key, value in sorted(self.values.items()):
            family.add_metric(list(key), value)
        return [family]


class FastHistogram:
    """A labelled histogram: per key, a count per bucket (upper bounds inclusive, as
    Prometheus' ``le``) and the sum. `observe` is a dict lookup and a bisection."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str],
                 buckets: Sequence[float]) -> None:
        self.name, self.help, self.labels = name, help_text, list(labels)
        self.bounds = sorted(float(b) for b in buckets)
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        # per key: counts of each bucket (the last one is +Inf), then the sum
        self.series: dict[Key, list[float]] = {}

    def observe(self, key: Key, value: float) -> None:
        row = self.series.get(key)
        if row is None:
            row = self.series[key] = [0] * (len(self.bounds) + 2)
        row[bisect_left(self.bounds, value)] += 1
        row[-1] += value

    def count(self, key: Key | None = None) -> int:
        rows = self.series.values() if key is None else [self.series.get(key) or [0]]
        return int(sum(sum(row[:-1]) for row in rows if len(row) > 1))

    def collect(self) -> list[Metric]:
        family = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        for key, row in sorted(self.series.items()):
            cumulative, buckets = 0, []
            for le, n in zip(self._les, row[:-1], strict=True):
                cumulative += n
                buckets.append((le, cumulative))
            family.add_metric(list(key), buckets, row[-1])
        return [family]
