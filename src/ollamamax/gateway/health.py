"""Active health checks: poll every node, mark it down after failures and up after success.

Nodes run by OllamaMax answer ``GET /telemetry`` (health, models, what is loaded, queue).
A stock Ollama server without a node agent answers 404 there; it is then read through
``/api/tags`` and ``/api/ps``, as Ollama itself exposes them. Each tick returns one sentence
per change, so the loop explains itself in the log and in tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ollamamax.config import GatewayConfig
from ollamamax.gateway.upstream import Upstream
from ollamamax.metrics import GatewayMetrics
from ollamamax.models.names import try_key
from ollamamax.scheduler import ClusterView, NodeState

log = logging.getLogger(__name__)


class HealthChecker:
    def __init__(self, config: GatewayConfig, view: ClusterView, upstream: Upstream,
                 metrics: GatewayMetrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.view = view
        self.upstream = upstream
        self.metrics = metrics
        self.clock = clock
        self._failures: dict[str, int] = {}
        self._successes: dict[str, int] = {}
        self.ticks = 0  # liveness: the loop still turns

    async def tick(self) -> list[str]:
        """Check every node once; return what changed, one sentence each."""
        nodes = list(self.view.nodes.values())
        results = await asyncio.gather(*(self._check(n) for n in nodes))
        self.ticks += 1
        return [sentence for sentence in results if sentence]

    async def run(self) -> None:
        while True:
            started = self.clock()
            for sentence in await self.tick():
                log.info("%s", sentence)
            await asyncio.sleep(max(0.0, self.config.health_interval - (self.clock() - started)))

    async def _check(self, node: NodeState) -> str:
        try:
            info = await self._probe(node)
        except Exception as exc:  # noqa: BLE001 - any failure is a failed check
            return self._failed(node, _describe(exc))
        return self._passed(node, info)

    async def _probe(self, node: NodeState) -> dict[str, Any]:
        timeout = self.config.health_timeout
        status, body = await self.upstream.get_json(node.url + "/telemetry", timeout)
        if status == 404:
            return await self._probe_stock_ollama(node, timeout)
        if status != 200:
            raise RuntimeError(f"telemetry answered HTTP {status}")
        return msgspec.json.decode(body)

    async def _probe_stock_ollama(self, node: NodeState, timeout: float) -> dict[str, Any]:
        (s1, tags), (s2, ps) = await asyncio.gather(
            self.upstream.get_json(node.url + "/api/tags", timeout),
            self.upstream.get_json(node.url + "/api/ps", timeout))
        if s1 != 200 or s2 != 200:
            raise RuntimeError(f"/api/tags or /api/ps answered HTTP {s1}/{s2}")
        loaded = msgspec.json.decode(ps).get("models") or []
        return {"engine": "ollama (no agent)",
                "models": msgspec.json.decode(tags).get("models") or [],
                "loaded": [{"name": m.get("name") or m.get("model")} for m in loaded],
                "queue_depth": 0}

    def _passed(self, node: NodeState, info: dict[str, Any]) -> str:
        self._failures[node.id] = 0
        self._successes[node.id] = self._successes.get(node.id, 0) + 1
        models = [try_key(m.get("name", "")) for m in info.get("models", [])]
        loaded = [try_key(m.get("name", "")) for m in info.get("loaded", [])
                  if not m.get("loading")]
        self.view.set_models(node.id, filter(None, models), filter(None, loaded),
                             int(info.get("queue_depth", 0) or 0))
        node.info = info
        if node.healthy or self._successes[node.id] < self.config.healthy_after:
            node.updated_at = self.clock()
            return ""
        self.view.set_health(node.id, True, self.clock())
        self.metrics.node_healthy.labels(node.id).set(1)
        return f"{node.id} is up ({len(models)} models, {len(loaded)} loaded)"

    def _failed(self, node: NodeState, reason: str) -> str:
        self._successes[node.id] = 0
        self._failures[node.id] = self._failures.get(node.id, 0) + 1
        node.last_error = reason
        if not node.healthy and node.updated_at:
            return ""
        if node.healthy and self._failures[node.id] < self.config.unhealthy_after:
            return ""
        self.view.set_health(node.id, False, self.clock(), reason)
        self.metrics.node_healthy.labels(node.id).set(0)
        return f"{node.id} is down after {self._failures[node.id]} failed checks: {reason}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "health check timed out"
    return str(exc) or type(exc).__name__
