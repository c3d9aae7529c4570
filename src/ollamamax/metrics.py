"""Every metric OllamaMax exports, defined once, with its help text.

Each process part (gateway, node) has its own registry so several can live in one process
(tests, ``ollamamax up``) without mixing their series. ``GET /metrics`` serves the registry in
Prometheus' text format.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 120.0, 300.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def cached_labels(metric: Any) -> Callable[..., Any]:
    """`metric.labels` memoised: prometheus_client's `labels` takes a lock and validates
    the label values on every call, which costs more than the `inc` it precedes."""
    return functools.lru_cache(maxsize=4096)(metric.labels)


class _Collected:
    """A collector whose samples a function computes at scrape time."""

    def __init__(self, families: Callable[[], list[Metric]]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families()


def _gauge(name: str, help_text: str, label: str, values: Mapping[str, int]) -> Metric:
    family = GaugeMetricFamily(name, help_text, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "ollamamax_gateway_requests", "Requests answered by the gateway, by endpoint, "
            "HTTP status and the node that served them ('' when none did).",
            ["endpoint", "status", "node"], registry=r)
        self.duration = Histogram(
            "ollamamax_gateway_request_duration_seconds", "Time from request to the last byte "
            "of the answer, by endpoint.", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(
            "ollamamax_gateway_ttft_seconds", "Time from request to the first byte of the "
            "answer (first token when streaming), by endpoint.", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "ollamamax_gateway_in_flight", "Requests the gateway is serving now.", registry=r)
        self._in_flight_by_node: Callable[[], Mapping[str, int]] = dict
        r.register(_Collected(lambda: [_gauge(
            "ollamamax_gateway_node_in_flight", "Requests in flight to each node.", "node",
            self._in_flight_by_node())]))
        self.node_healthy = Gauge(
            "ollamamax_gateway_node_healthy", "1 when the node passes health checks, else 0.",
            ["node"], registry=r)
        self.retries = Counter(
            "ollamamax_gateway_retries", "Requests sent to another node after a failure "
            "before the first byte, by reason.", ["reason"], registry=r)
        self.stream_errors = Counter(
            "ollamamax_gateway_stream_errors", "Streams ended with an error chunk because a "
            "node failed after the first byte.", ["node"], registry=r)

    def read_in_flight(self, total: Callable[[], float],
                       by_node: Callable[[], Mapping[str, int]]) -> None:
        """Read the in-flight gauges from the request path when scraped: the request path
        counts anyway, and a prometheus_client gauge takes a lock on every inc and dec."""
        self.in_flight.set_function(total)
        self._in_flight_by_node = by_node

    def render(self) -> bytes:
        return generate_latest(self.registry)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "ollamamax_node_requests", "Requests answered by this node, by endpoint and HTTP "
            "status.", ["endpoint", "status"], registry=r)
        self.duration = Histogram(
            "ollamamax_node_request_duration_seconds", "Time to answer a request, by endpoint.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "ollamamax_node_in_flight", "Requests this node is serving now.", registry=r)
        self.tokens = Counter(
            "ollamamax_node_generated_tokens", "Tokens generated, by model.", ["model"],
            registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
