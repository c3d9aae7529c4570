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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ollamamax.observability.instruments import FastCounter, FastHistogram
from ollamamax.observability.process import ProcessStats

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
        # every request passes these three: lock-free instruments (a prometheus_client
        # Counter or Histogram takes a lock per call and walks its buckets)
        self.requests = FastCounter(
            "ollamamax_gateway_requests", "Requests answered by the gateway, by endpoint, "
            "HTTP status and the node that served them ('' when none did).",
            ["endpoint", "status", "node"])
        self.duration = FastHistogram(
            "ollamamax_gateway_request_duration_seconds", "Time from request to the last byte "
            "of the answer, by endpoint.", ["endpoint"], LATENCY_BUCKETS)
        self.ttft = FastHistogram(
            "ollamamax_gateway_ttft_seconds", "Time from request to the first byte of the "
            "answer (first token when streaming), by endpoint.", ["endpoint"], LATENCY_BUCKETS)
        for collector in (self.requests, self.duration, self.ttft):
            r.register(collector)
        # refusals by the API-key guard (security.middleware), by key name and reason
        self.auth_refused = FastCounter(
            "ollamamax_gateway_auth_refused", "Requests the API-key check refused, by key name "
            "('' when no key or an unknown one came) and reason (missing, invalid: 401; "
            "not_admin: 403).", ["key", "reason"])
        self.rate_limited = FastCounter(
            "ollamamax_gateway_rate_limited", "Requests refused with 429 for one key's limits, "
            "by key name and reason (requests_per_s, tokens_per_min, tokens_per_day; queue: "
            "too many of the key's requests waiting in the admission queue).", ["key", "reason"])
        r.register(self.auth_refused)
        r.register(self.rate_limited)
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
        self.retry_budget_exceeded = Counter(
            "ollamamax_gateway_retry_budget_exceeded", "Retries and hedges not made because "
            "the retry budget (resilience.retry_budget) was spent.", registry=r)
        self.ejections = Counter(
            "ollamamax_gateway_ejections", "Times passive outlier detection opened a node's "
            "circuit breaker (ejected it from routing), by node.", ["node"], registry=r)
        self.node_ejected = Gauge(
            "ollamamax_gateway_node_ejected", "1 while outlier detection keeps the node out "
            "of routing, else 0.", ["node"], registry=r)
        self.panic = Gauge(
            "ollamamax_gateway_panic", "1 while ejections are lifted because too few nodes "
            "would be routable.", registry=r)
        self.cluster_store_up = Gauge(
            "ollamamax_cluster_store_up", "1 while the cluster store (etcd) answers this "
            "gateway; 0 while it does not and routing goes on from the last view.", registry=r)
        self._flag_served: Callable[[], Mapping[tuple[str, str], int]] = dict
        r.register(_Collected(self._flag_families))
        self._cache_tiers: Callable[[], list[tuple[str, int, int]]] = list
        self._cache_invalidations: Callable[[], int] = int
        r.register(_Collected(self._cache_families))
        self.observed = ObservedGateway(r)  # the monitoring catalogue, below

    def read_flag_counts(self, served: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        """Read the requests served per flag variant when scraped (the scheduler counts them
        in plain integers: a prometheus_client counter takes a lock on every `inc`)."""
        self._flag_served = served

    def _flag_families(self) -> list[Metric]:
        family = CounterMetricFamily(
            "ollamamax_flag_requests", "Requests routed with each variant of each feature "
            "flag (docs/benchmarks.md: the optimisation catalogue's pairs).",
            labels=["flag", "variant"])
        for (flag, variant), count in sorted(self._flag_served().items()):
            family.add_metric([flag, variant], count)
        return [family]

    def read_prewarm(self, counts: Callable[[], tuple[int, int, int]]) -> None:
        """Read the prewarmer's (loads, used, wasted) when scraped (scheduler.prewarm)."""
        self.registry.register(_Collected(lambda: [
            CounterMetricFamily(name, text, value=value) for (name, text), value in zip(
                (("ollamamax_prewarm_loads", "Models loaded ahead of forecast demand."),
                 ("ollamamax_prewarm_used", "Prewarmed copies a request was then sent to."),
                 ("ollamamax_prewarm_wasted", "Prewarmed copies gone (expired, evicted, failed "
                  "to load) before any request used them.")),
                counts(), strict=True)]))

    def read_cache(self, tiers: Callable[[], list[tuple[str, int, int]]],
                   invalidations: Callable[[], int]) -> None:
        """Read the response cache when scraped: per tier (name, evictions, bytes), and the
        model digests invalidated (lookups are counted as they happen: `observed.cache`)."""
        self._cache_tiers, self._cache_invalidations = tiers, invalidations

    def _cache_families(self) -> list[Metric]:
        evictions = CounterMetricFamily(
            "ollamamax_cache_evictions", "Entries a response-cache tier removed to stay within "
            "its size (not invalidations), by tier.", labels=["tier"])
        held = GaugeMetricFamily("ollamamax_cache_bytes", "Bytes a response-cache tier holds "
                                 "now (redis: the server's used memory), by tier.",
                                 labels=["tier"])
        for tier, evicted, size in self._cache_tiers():
            evictions.add_metric([tier], evicted)
            held.add_metric([tier], size)
        dropped = CounterMetricFamily(
            "ollamamax_cache_invalidations", "Model digests whose cached answers were dropped "
            "because the model changed.", value=self._cache_invalidations())
        return [evictions, held, dropped]

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
        self.sync = SyncMetrics(r)
        r.register(ProcessStats("ollamamax_node"))

    def render(self) -> bytes:
        return generate_latest(self.registry)


# -- the monitoring catalogue (docs/metrics.md) ------------------------------------------------
# Recorded on the request path with O(1) work and no lock (`observability.instruments`), or
# read when scraped. Histograms by model only, not node x model: at 1,000 nodes that would be
# hundreds of thousands of series; requests and tokens are counted per node and model.

SCHEDULE_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 0.001, 0.0025,
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                       0.25, 0.5, 1.0)
WAIT_BUCKETS = (0.0, *LATENCY_BUCKETS)
CACHE_TIERS = ("memory", "disk", "redis")


class ObservedGateway:
    """What the gateway measures per request, per node and model, and about itself."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.requests = FastCounter(
            "ollamamax_gateway_model_requests", "Requests a node finished, by node, model and "
            "outcome (ok; error: failed at that node; cancelled: the client left, or a hedged "
            "copy lost).",
            ["node", "model", "outcome"])
        self.ttft = FastHistogram(
            "ollamamax_gateway_model_ttft_seconds", "Time from a request's arrival at the "
            "gateway to its first byte from the node (the whole answer when not streamed), "
            "by model.", ["model"], LATENCY_BUCKETS)
        self.request_time = FastHistogram(
            "ollamamax_gateway_model_request_seconds", "Time from sending a request to a node "
            "to its last byte, by model (end to end less the admission-queue wait, which "
            "ollamamax_gateway_queue_wait_seconds holds).", ["model"], LATENCY_BUCKETS)
        self.inter_token = FastHistogram(
            "ollamamax_gateway_inter_token_seconds", "Time between two generated tokens (the "
            "node's decode time / tokens; 1 / this is the request's decode speed), per "
            "request, by model.", ["model"],
            INTER_TOKEN_BUCKETS)
        self.tokens = FastCounter(
            "ollamamax_gateway_generated_tokens", "Tokens generated, by node and model (its "
            "rate is the cluster's tokens/s).", ["node", "model"])
        self.prompt_tokens = FastCounter(
            "ollamamax_gateway_prompt_tokens", "Prompt tokens, by node, model and whether the "
            "node's prefix cache held them (cache = hit | miss).", ["node", "model", "cache"])
        self.queue_wait = FastHistogram(
            "ollamamax_gateway_queue_wait_seconds", "Time a request waited in the gateway's "
            "admission queue for a slot (0 when one was free at once).", [], WAIT_BUCKETS)
        self.schedule = FastHistogram(
            "ollamamax_gateway_schedule_seconds", "Time of one scheduling decision (the "
            "strategy choosing a node, or telling the request to wait).", [], SCHEDULE_BUCKETS)
        self.cache = FastCounter(
            "ollamamax_cache_lookups", "Response-cache lookups by tier and result (hit | miss); "
            "zero until the cache exists.", ["tier", "result"],
            preset=[(t, r) for t in CACHE_TIERS for r in ("hit", "miss")])
        self.alert_notifications = FastCounter(
            "ollamamax_gateway_alert_notifications", "Alert webhook deliveries, by result (sent: "
            "a 2xx answer; failed: none after every retry).", ["result"],
            preset=[("sent",), ("failed",)])
        self.monitor_cpu = FastCounter(
            "ollamamax_gateway_monitor_cpu_seconds", "CPU time the gateway spent on its own "
            "monitoring loop: sampling, alert rules, notifications and dashboard snapshots.")
        self.process = ProcessStats("ollamamax_gateway")
        self.sync = SyncMetrics(r)
        self.alerts_firing: Callable[[], list[tuple[str, str]]] = list
        self._nodes: Callable[[], list[tuple[str, int, int, int]]] = list
        self._held: Callable[[], int] = int
        for collector in (self.requests, self.ttft, self.request_time, self.inter_token,
                          self.tokens, self.prompt_tokens,
                          self.queue_wait, self.schedule, self.cache, self.process,
                          self.alert_notifications, self.monitor_cpu):
            r.register(collector)
        r.register(_Collected(self._queue_families))

    def read_queues(self, held: Callable[[], int],
                    nodes: Callable[[], list[tuple[str, int, int, int]]]) -> None:
        """When scraped: requests held at the gateway, and per node (id, queue depth, slots
        busy, slots) as the node last reported."""
        self._held, self._nodes = held, nodes

    def _queue_families(self) -> list[Metric]:
        held = GaugeMetricFamily("ollamamax_gateway_queue_depth", "Requests waiting in the "
                                 "gateway's admission queue now.")
        held.add_metric([], self._held())
        depth = GaugeMetricFamily("ollamamax_gateway_node_queue_depth", "Requests queued on "
                                  "each node, as it last reported.", labels=["node"])
        busy = GaugeMetricFamily("ollamamax_gateway_node_slots_busy", "Request slots in use "
                                 "on each node, as it last reported.", labels=["node"])
        slots = GaugeMetricFamily("ollamamax_gateway_node_slots", "Request slots of the models "
                                  "loaded on each node, as it last reported.", labels=["node"])
        for node, queued, in_use, total in self._nodes():
            depth.add_metric([node], queued)
            busy.add_metric([node], in_use)
            slots.add_metric([node], total)
        firing = GaugeMetricFamily("ollamamax_gateway_alerts_firing", "1 for each alert rule "
                                   "firing now, by rule and severity.", labels=["rule", "severity"])
        for rule, severity in self.alerts_firing():
            firing.add_metric([rule, severity], 1)
        return [held, depth, busy, slots, firing]


class SyncMetrics:
    """Model sync between nodes (peer-to-peer blob transfers): defined now, zero until model
    sync exists. `transfers` is read when scraped: (model, source, target, done, total)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.bytes = FastCounter(
            "ollamamax_sync_bytes", "Model bytes moved by model sync, by direction (sent | "
            "received).", ["direction"], preset=[("sent",), ("received",)])
        self.transfers: Callable[[], list[tuple[str, str, str, int, int]]] = list
        r.register(self.bytes)
        r.register(_Collected(self._families))

    def _families(self) -> list[Metric]:
        rows = self.transfers()
        active = GaugeMetricFamily("ollamamax_sync_transfers_active", "Model transfers under "
                                   "way.")
        active.add_metric([], len(rows))
        progress = GaugeMetricFamily("ollamamax_sync_progress_ratio", "Share of each transfer "
                                     "done (0..1).", labels=["model", "source", "target"])
        for model, source, target, done, total in rows:
            progress.add_metric([model, source, target], done / total if total else 0.0)
        return [active, progress]
