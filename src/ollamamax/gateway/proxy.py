"""The request path: decide, send, fail over before the first byte, stream, record.

A failure before the first byte reaches the client (connection refused, a 5xx, a timeout, a
node that dies while composing a non-streamed answer) sends the request to the next node of
the decision. A failure after it ends the stream with an error chunk; the client never hangs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web

from ollamamax.config import GatewayConfig
from ollamamax.errors import (
    ModelNotFound,
    OllamaMaxError,
    StreamBroken,
    Unavailable,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatus,
)
from ollamamax.gateway.adapters import Adapter
from ollamamax.gateway.upstream import Reply, Upstream
from ollamamax.metrics import GatewayMetrics, cached_labels
from ollamamax.scheduler import ClusterView, RouteRequest, Scheduler

log = logging.getLogger(__name__)


class RequestPath:
    def __init__(self, config: GatewayConfig, view: ClusterView, scheduler: Scheduler,
                 upstream: Upstream, metrics: GatewayMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.view = view
        self.scheduler = scheduler
        self.upstream = upstream
        self.metrics = metrics
        self.clock = clock
        self._requests = cached_labels(metrics.requests)
        self._duration = cached_labels(metrics.duration)
        self._ttft = cached_labels(metrics.ttft)
        self.in_flight = 0
        metrics.read_in_flight(lambda: self.in_flight,
                               lambda: {n.id: n.in_flight for n in view.nodes.values()})

    async def forward(self, request: web.Request, route: RouteRequest, requested: str,
                      path: str, body: bytes, adapter: Adapter) -> web.StreamResponse:
        """Serve one inference request from the best node that answers."""
        started = time.perf_counter()
        self.in_flight += 1
        status, node = 500, ""
        try:
            try:
                decision = self.scheduler.decide(route, self.view, self.clock())
            except ModelNotFound:
                raise ModelNotFound(requested) from None
            failures: list[UpstreamError] = []
            for node in decision.nodes[: self.config.max_attempts]:
                reply = await self._attempt(node, route, path, body, failures)
                if reply is None:
                    continue
                if reply.status == 404 and len(failures) + 1 < len(decision.nodes):
                    # The node no longer has the model (the view was stale): try the next.
                    failures.append(UpstreamStatus(node, 404, reply.first))
                    reply.release()
                    self._finish(node, route, ok=False)
                    continue
                response = await self._respond(request, route, node, reply, adapter, started)
                status = response.status
                return response
            node = ""
            status = 503
            raise self._exhausted(requested, failures)
        except OllamaMaxError as exc:
            status = exc.status
            raise
        finally:
            self.in_flight -= 1
            self._requests(route.endpoint, str(status), node).inc()
            self._duration(route.endpoint).observe(time.perf_counter() - started)

    async def _attempt(self, node: str, route: RouteRequest, path: str, body: bytes,
                       failures: list[UpstreamError]) -> Reply | None:
        state = self.view.nodes[node]
        self.view.started(node)
        try:
            return await self.upstream.send(node, state.url + path, body, read_all=not route.stream)
        except UpstreamError as exc:
            self._finish(node, route, ok=False)
            failures.append(exc)
            reason = type(exc).__name__.removeprefix("Upstream").lower() or "error"
            self.metrics.retries.labels(reason).inc()
            log.warning("%s; trying the next node", exc.message)
            if isinstance(exc, UpstreamConnectError) and self.view.set_health(
                    node, False, self.clock(), exc.reason):
                self.metrics.node_healthy.labels(node).set(0)
                log.warning("marked %s down: %s", node, exc.reason)
            return None

    async def _respond(self, request: web.Request, route: RouteRequest, node: str, reply: Reply,
                       adapter: Adapter, started: float) -> web.StreamResponse:
        ok = False
        try:
            if not route.stream or reply.status >= 400:
                response = adapter.whole(reply.status, reply.first)
                reply.release()
                ok = reply.status < 400
                self._ttft(route.endpoint).observe(time.perf_counter() - started)
                return response
            response, ok = await self._stream(request, route, node, reply, adapter, started)
            return response
        finally:
            self._finish(node, route, ok)

    async def _stream(self, request: web.Request, route: RouteRequest, node: str, reply: Reply,
                      adapter: Adapter, started: float) -> tuple[web.StreamResponse, bool]:
        response = web.StreamResponse(headers={"Content-Type": adapter.stream_content_type})
        await response.prepare(request)
        try:
            await response.write(adapter.feed(reply.first))
            self._ttft(route.endpoint).observe(time.perf_counter() - started)
            async for data in reply.chunks():
                out = adapter.feed(data)
                if out:
                    await response.write(out)
            tail = adapter.end()
        except StreamBroken as exc:
            log.warning("%s; ending the stream with an error", exc.message)
            self.metrics.stream_errors.labels(node).inc()
            tail = adapter.error(exc.message)
            reply.close()
            await response.write(tail)
            await response.write_eof()
            return response, False
        except BaseException:
            reply.close()  # the client went away: let the node stop generating
            raise
        if tail:
            await response.write(tail)
        await response.write_eof()
        reply.release()
        return response, True

    def _finish(self, node: str, route: RouteRequest, ok: bool) -> None:
        self.view.finished(node, route.model, ok)

    def _exhausted(self, requested: str, failures: list[UpstreamError]) -> OllamaMaxError:
        if not failures:
            return Unavailable(f"no node can serve model '{requested}' now")
        reasons = "; ".join(f.message for f in failures)
        return Unavailable(f"no node could answer for model '{requested}': {reasons}")
