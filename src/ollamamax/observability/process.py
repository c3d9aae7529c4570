"""This process's memory and CPU, for ``/metrics``, the dashboard and the alert rules."""

from __future__ import annotations

import os

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

MB = 1 << 20  # "MB" in figures and thresholds: MiB, as top and ps count


class ProcessStats:
    """Reads the kernel's counters for this process (a few microseconds each)."""

    def __init__(self, prefix: str, pid: int | None = None) -> None:
        self.prefix = prefix  # e.g. "ollamamax_gateway": metric names begin with it
        self.process = psutil.Process(pid or os.getpid())

    def rss_bytes(self) -> int:
        return int(self.process.memory_info().rss)

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def collect(self) -> list[Metric]:
        p = self.prefix
        memory = GaugeMetricFamily(f"{p}_process_resident_memory_bytes",
                                   "Resident memory of this process (RSS), in bytes.")
        memory.add_metric([], self.rss_bytes())
        cpu = CounterMetricFamily(f"{p}_process_cpu_seconds",
                                  "CPU time this process used (user + system), in seconds; "
                                  "its rate x 100 is the CPU % of one core.")
        cpu.add_metric([], self.cpu_seconds())
        return [memory, cpu]
