"""Every metric OllamaMax exports, defined once, with its help text.

Each process part (gateway, node) has its own registry so several can live in one process
(tests, ``ollamamax up``) without mixing their series. ``GET /metrics`` serves the registry in
Prometheus' text format.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 120.0, 300.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


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
        self.node_in_flight = Gauge(
            "ollamamax_gateway_node_in_flight", "Requests in flight to each node.", ["node"],
            registry=r)
        self.node_healthy = Gauge(
            "ollamamax_gateway_node_healthy", "1 when the node passes health checks, else 0.",
            ["node"], registry=r)
        self.retries = Counter(
            "ollamamax_gateway_retries", "Requests sent to another node after a failure "
            "before the first byte, by reason.", ["reason"], registry=r)
        self.stream_errors = Counter(
            "ollamamax_gateway_stream_errors", "Streams ended with an error chunk because a "
            "node failed after the first byte.", ["node"], registry=r)

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
