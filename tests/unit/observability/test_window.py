"""Sliding-window percentiles, rates and the lock-free instruments."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from ollamamax.observability.instruments import FastCounter, FastHistogram
from ollamamax.observability.window import Cumulative, Series, WindowedQuantiles


def test_quantiles_are_within_the_bucket_precision():
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=-3, sigma=1.2, size=20_000)
    window = WindowedQuantiles(window=60)
    for k, v in enumerate(values):
        window.record(100.0 + k * 0.001, float(v))  # 20 s of arrivals
    got = window.quantiles(120.0)
    assert got is not None
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(values, q, method="inverted_cdf"))
        assert got[q] == pytest.approx(exact, rel=0.03)


def test_old_values_leave_the_window():
    window = WindowedQuantiles(window=10, slot=1)
    window.record(0.5, 5.0)
    window.record(12.5, 0.1)
    assert window.quantiles(12.9, (0.99,))[0.99] == pytest.approx(0.1, rel=0.03)
    assert window.count(12.9, window=20) == 1  # never more than the slots it keeps
    assert window.quantiles(30.0) is None


def test_a_shorter_query_window_and_zero_values():
    window = WindowedQuantiles(window=60)
    window.record(1.0, 0.0)
    window.record(50.0, 2.0)
    assert window.quantiles(50.5, (0.5,), window=5) == {0.5: pytest.approx(2.0, rel=0.03)}
    assert window.quantiles(50.5, (0.0001,))[0.0001] == 0.0


def test_memory_stays_bounded_however_many_values_arrive():
    window = WindowedQuantiles(window=5, slot=1)
    rng = np.random.default_rng(1)
    for k, v in enumerate(rng.uniform(0.001, 1.0, 100_000)):
        window.record(k * 0.0005, float(v))
    slots = window._counts
    assert len(slots) == 6
    # 0.001..1 s spans ~176 buckets of 4 %: every slot holds at most that many counters
    assert max(len(s) for s in slots) <= 180


def test_cumulative_rate_over_its_window():
    c = Cumulative(window=10)
    assert c.rate() is None
    for t in range(0, 31):
        c.add(float(t), t * 5.0)
    span, grown = c.growth()
    assert span == pytest.approx(10.0) and grown == pytest.approx(50.0)
    assert c.rate() == pytest.approx(5.0)


def test_series_keeps_the_last_points():
    s = Series(capacity=3)
    for t in range(5):
        s.add(t, t * 2.0)
    assert list(s.times) == [2, 3, 4] and s.last() == 8.0


def test_fast_histogram_renders_like_prometheus_clients():
    buckets = (0.01, 0.1, 1.0)
    values = [0.005, 0.01, 0.05, 0.5, 3.0]
    ours = FastHistogram("h_seconds", "help", ["model"], buckets)
    registry = CollectorRegistry()
    registry.register(ours)
    theirs_registry = CollectorRegistry()
    theirs = Histogram("h_seconds", "help", ["model"], buckets=buckets, registry=theirs_registry)
    for v in values:
        ours.observe(("m",), v)
        theirs.labels("m").observe(v)

    def lines(reg):
        return sorted(line for line in generate_latest(reg).decode().splitlines()
                      if line.startswith("h_seconds") and "_created" not in line)

    assert lines(registry) == lines(theirs_registry)
    assert ours.count() == 5


def test_fast_counter_presets_and_counts():
    c = FastCounter("c", "help", ["tier", "result"], preset=[("memory", "hit")])
    c.inc(("disk", "miss"), 3)
    assert c.value(("memory", "hit")) == 0 and c.total() == 3
    family = c.collect()[0]
    assert {s.labels["tier"]: s.value for s in family.samples if s.name == "c_total"} == {
        "memory": 0, "disk": 3}
