"""Active health checks: poll every node, mark it down after failures and up after success.

Nodes run by OllamaMax answer ``GET /telemetry`` (health, models, what is loaded, slots,
queue, memory, draining). A stock Ollama server without a node agent answers 404 there; it is
then read through ``/api/tags`` and ``/api/ps``, as Ollama itself exposes them. Each tick
returns one sentence per change, so the loop explains itself in the log and in tests.

A node found down has its requests still waiting for a first byte failed at once, so they go
to another node instead of waiting out the TTFT timeout (a paused or hung node costs a client
about `unhealthy_after` checks, not `ttft_timeout`). Each tick also serves the circuit
breakers' time (`gateway.resilience`): ejections that ended become half-open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ollamamax.cluster.view_sync import apply_telemetry
from ollamamax.config import GatewayConfig, ResilienceConfig
from ollamamax.gateway.resilience import Resilience
from ollamamax.gateway.upstream import Upstream
from ollamamax.metrics import GatewayMetrics
from ollamamax.scheduler import ClusterView

log = logging.getLogger(__name__)


class HealthChecker:
    def __init__(self, config: GatewayConfig, view: ClusterView, upstream: Upstream,
                 metrics: GatewayMetrics, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[], None] | None = None,
                 resilience: Resilience | None = None,
                 nodes: Callable[[], list[int]] | None = None) -> None:
        self.config = config
        self.nodes = nodes or view.present_nodes  # which to poll (cluster mode: not members)
        self.view = view
        self.upstream = upstream
        self.metrics = metrics
        self.clock = clock
        self.resilience = resilience or Resilience(ResilienceConfig(), view, metrics, clock)
        self.on_change = on_change  # capacity may have freed: re-check held requests
        self._failures: dict[int, int] = {}
        self._successes: dict[int, int] = {}
        self.ticks = 0  # liveness: the loop still turns

    async def tick(self) -> list[str]:
        """Check every node once; return what changed, one sentence each."""
        nodes = self.nodes()
        results = await asyncio.gather(*(self._check(i) for i in nodes))
        self.ticks += 1
        sentences = [sentence for sentence in results if sentence]
        if sentences:
            change = self.resilience.health_changed()  # panic may begin or end
            sentences.extend([change] if change else [])
        sentences.extend(self.resilience.tick())
        if self.on_change is not None:
            self.on_change()
        return sentences

    async def run(self) -> None:
        while True:
            started = self.clock()
            for sentence in await self.tick():
                log.info("%s", sentence)
            await asyncio.sleep(max(0.0, self.config.health_interval - (self.clock() - started)))

    async def _check(self, i: int) -> str:
        try:
            info = await self._probe(self.view.urls[i])
        except Exception as exc:  # noqa: BLE001 - any failure is a failed check
            return self._failed(i, _describe(exc))
        return self._passed(i, info)

    async def _probe(self, url: str) -> dict[str, Any]:
        timeout = self.config.health_timeout
        status, body = await self.upstream.get_json(url + "/telemetry", timeout)
        if status == 404:
            return await self._probe_stock_ollama(url, timeout)
        if status == 401:  # security.cluster_token differs here and there: no traffic
            raise RuntimeError("cluster token refused (HTTP 401 from /telemetry)")
        if status != 200:
            raise RuntimeError(f"telemetry answered HTTP {status}")
        return msgspec.json.decode(body)

    async def _probe_stock_ollama(self, url: str, timeout: float) -> dict[str, Any]:
        (s1, tags), (s2, ps) = await asyncio.gather(
            self.upstream.get_json(url + "/api/tags", timeout),
            self.upstream.get_json(url + "/api/ps", timeout))
        if s1 != 200 or s2 != 200:
            raise RuntimeError(f"/api/tags or /api/ps answered HTTP {s1}/{s2}")
        loaded = msgspec.json.decode(ps).get("models") or []
        return {"engine": "ollama (no agent)",
                "models": msgspec.json.decode(tags).get("models") or [],
                "loaded": [{"name": m.get("name") or m.get("model"), "size": m.get("size", 0),
                            "slots": 1} for m in loaded],
                "queue_depth": 0}

    def _passed(self, i: int, info: dict[str, Any]) -> str:
        view = self.view
        self._failures[i] = 0
        self._successes[i] = self._successes.get(i, 0) + 1
        apply_telemetry(view, i, info, self.clock())
        drained = self._draining(i, bool(info.get("draining")))
        if view.healthy[i] or self._successes[i] < self.config.healthy_after:
            return drained
        view.set_health(i, True, self.clock())
        self.metrics.node_healthy.labels(view.ids[i]).set(1)
        models = sum(bool(view.has[m][i]) for m in range(len(view.model_names)))
        loaded = sum(bool(view.loaded[m][i]) for m in range(len(view.model_names)))
        up = f"{view.ids[i]} is up ({models} models, {loaded} loaded)"
        return f"{up}; {drained}" if drained else up

    def _draining(self, i: int, draining: bool) -> str:
        view = self.view
        if bool(view.draining[i]) == draining:
            return ""
        view.set_draining(i, draining)
        return (f"{view.ids[i]} is draining: no new requests go there" if draining
                else f"{view.ids[i]} takes requests again (no longer draining)")

    def _failed(self, i: int, reason: str) -> str:
        view = self.view
        self._successes[i] = 0
        self._failures[i] = self._failures.get(i, 0) + 1
        view.last_error[i] = reason
        if not view.healthy[i] and view.updated_at[i]:
            return ""
        if view.healthy[i] and self._failures[i] < self.config.unhealthy_after:
            return ""
        view.set_health(i, False, self.clock(), reason)
        self.metrics.node_healthy.labels(view.ids[i]).set(0)
        moved = self.upstream.abandon(view.urls[i], f"declared down by its health checks "
                                      f"({reason})")
        also = f"; {moved} requests waiting for its first byte go elsewhere" if moved else ""
        return f"{view.ids[i]} is down after {self._failures[i]} failed checks: {reason}{also}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "health check timed out"
    return str(exc) or type(exc).__name__
