"""Once a tick (1 s): rates from counters, percentiles from the sliding windows, this
process's memory and CPU; the last minutes kept as series for the dashboard's charts, and the
current values (over the alert window) handed to the alert rules as signals."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ollamamax.metrics import GatewayMetrics
from ollamamax.observability.process import MB
from ollamamax.observability.recorder import GatewayRecorder
from ollamamax.observability.window import Cumulative, Series

CHART_WINDOW = 10.0  # seconds the percentiles of one chart point cover
CHART_POINTS = 300  # points kept per series: 5 minutes at one a second
SERIES = ("requests_per_s", "errors_per_s", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms",
          "schedule_p99_us", "in_flight", "queued", "cpu_percent", "memory_mb")


class Sampler:
    def __init__(self, recorder: GatewayRecorder, metrics: GatewayMetrics, *, window: float,
                 in_flight: Callable[[], int], queued: Callable[[], int],
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, points: int = CHART_POINTS) -> None:
        self.recorder = recorder
        self.metrics = metrics
        self.window = window
        self.in_flight, self.queued = in_flight, queued
        self.clock, self.wall = clock, wall
        self.process = metrics.observed.process
        self.times: Series = Series(points)
        self.series = {name: Series(points) for name in SERIES}
        self._requests = Cumulative(window)
        self._errors = Cumulative(window)
        self._cpu = Cumulative(window)
        self._last: tuple[float, float, float, float] | None = None
        self.signals: dict[str, float | None] = {}
        self.ticks = 0

    def request_totals(self) -> tuple[float, float]:
        """(requests answered, of which 5xx) since start, from the gateway's counter."""
        total = errors = 0.0
        for (_endpoint, status, _node), value in self.metrics.requests.values.items():
            total += value
            if status.startswith("5"):
                errors += value
        return total, errors

    def tick(self) -> dict[str, float | None]:
        """Sample now; return the alert signals."""
        now, wall = self.clock(), self.wall()
        total, errors = self.request_totals()
        cpu = self.process.cpu_seconds()
        rss_mb = self.process.rss_bytes() / MB
        for cumulative, value in ((self._requests, total), (self._errors, errors),
                                  (self._cpu, cpu)):
            cumulative.add(now, value)
        last, self._last = self._last, (now, total, errors, cpu)
        rates: dict[str, float | None] = dict.fromkeys(("requests_per_s", "errors_per_s",
                                                        "cpu_percent"))
        if last is not None and now > last[0]:
            dt = now - last[0]
            rates = {"requests_per_s": (total - last[1]) / dt,
                     "errors_per_s": (errors - last[2]) / dt,
                     "cpu_percent": 100 * (cpu - last[3]) / dt}
        rec = self.recorder
        ttft = rec.ttft.quantiles(now, (0.5, 0.95, 0.99), CHART_WINDOW) or {}
        schedule = rec.schedule.quantiles(now, (0.99,), CHART_WINDOW) or {}
        point: dict[str, float | None] = {
            **rates, "ttft_p50_ms": _scaled(ttft.get(0.5), 1e3),
            "ttft_p95_ms": _scaled(ttft.get(0.95), 1e3), "ttft_p99_ms": _scaled(ttft.get(0.99), 1e3),
            "schedule_p99_us": _scaled(schedule.get(0.99), 1e6),
            "in_flight": self.in_flight(), "queued": self.queued(), "memory_mb": rss_mb}
        self.times.add(wall, wall)
        for name, series in self.series.items():
            series.add(wall, point.get(name))
        self.ticks += 1
        self.signals = self._signals(now, rss_mb)
        return self.signals

    def _signals(self, now: float, rss_mb: float) -> dict[str, float | None]:
        """The alert rules' inputs, over the alert window."""
        rec = self.recorder
        schedule = rec.schedule.quantiles(now, (0.99,), self.window) or {}
        ttft = rec.ttft.quantiles(now, (0.95,), self.window) or {}
        span, cpu = self._cpu.growth()
        _, requests = self._requests.growth()
        _, errors = self._errors.growth()
        return {"scheduling_p99_ms": _scaled(schedule.get(0.99), 1e3),
                "ttft_p95_ms": _scaled(ttft.get(0.95), 1e3),
                "memory_mb": rss_mb,
                "cpu_percent": 100 * cpu / span if span > 0 else None,
                "error_rate_percent": 100 * errors / requests if requests > 0 else None,
                "requests_per_s": requests / span if span > 0 else None}

    def charts(self) -> dict[str, Any]:
        """Every series, oldest point first, times in seconds since the epoch."""
        out: dict[str, Any] = {"t": [round(t, 3) for t in self.times.values]}  # type: ignore[arg-type]
        for name, series in self.series.items():
            out[name] = [None if v is None else round(v, 3) for v in series.values]
        return out


    def point(self) -> dict[str, Any]:
        """The newest point of every series (`charts`' last column)."""
        if not self.times.values:
            return {}
        out: dict[str, Any] = {"t": round(self.times.values[-1], 3)}  # type: ignore[arg-type]
        for name, series in self.series.items():
            v = series.values[-1]
            out[name] = None if v is None else round(v, 3)
        return out


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor
