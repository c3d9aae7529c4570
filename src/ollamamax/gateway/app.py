"""The gateway: one Ollama (and OpenAI) endpoint in front of many nodes.

    Ollama  POST /api/chat /api/generate /api/embed /api/embeddings /api/show
            POST /api/pull (into one node, the one with the most free disk: gateway.pull)
            GET  /api/tags (union over nodes) /api/ps (what is loaded where) /api/version  /
    OpenAI  POST /v1/chat/completions /v1/completions /v1/embeddings
            GET  /v1/models /v1/models/{model}
    Own     GET  /health /metrics /admin/nodes
            (with API keys, `security.middleware`: / and /health open, /admin/*, /dashboard
            and /metrics an admin key, the rest any key)
            GET /admin/flags, PUT /admin/flags/{name}, POST /admin/flags/{name}/rollback
            GET  /dashboard /dashboard/events /admin/status /admin/alerts (dashboard.routes)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import msgspec
from aiohttp import web

from ollamamax import OLLAMA_API_VERSION, __version__
from ollamamax.api import ollama_types as ot
from ollamamax.api.errors import error_middleware
from ollamamax.api.http import json_response, read_body, root
from ollamamax.cache.responses import ResponseCache, open_tiers
from ollamamax.cache.stack import CacheStack
from ollamamax.cluster import wiring
from ollamamax.config import Config
from ollamamax.errors import ConfigError, NotFound
from ollamamax.gateway import admin_flags
from ollamamax.gateway.adapters import Adapter, OllamaPassthrough
from ollamamax.gateway.drain import drain
from ollamamax.gateway.health import HealthChecker
from ollamamax.gateway.prewarm import PrewarmLoop
from ollamamax.gateway.proxy import RequestPath
from ollamamax.gateway.resilience import Resilience
from ollamamax.gateway.route import Request, route_request
from ollamamax.gateway.upstream import Upstream
from ollamamax.metrics import CONTENT_TYPE, GatewayMetrics
from ollamamax.models.names import try_key
from ollamamax.observability import request_ids
from ollamamax.observability.monitor import Monitor, observed_router
from ollamamax.scheduler import ClusterView, RouteRequest
from ollamamax.scheduler.prewarm import Prewarmer
from ollamamax.scheduler.queue import AdmissionQueue

log = logging.getLogger(__name__)

_UNSUPPORTED = ("push", "create", "delete", "copy")


def _guard(config: Config, metrics: GatewayMetrics) -> Any:
    if not config.security.keys_file:
        return None
    from ollamamax.security.middleware import Guard

    return Guard(config.security, metrics=metrics)


def _response_cache(config: Config, metrics: GatewayMetrics) -> ResponseCache | None:
    """The response cache of `[cache]` (docs/cache.md), its counters read by `metrics`."""
    if not config.cache.tiers:
        return None
    stack = CacheStack(open_tiers(config.cache), metrics.observed.cache.inc)
    metrics.read_cache(lambda: [(t.name, t.evictions, t.bytes) for t in stack.tiers],
                       lambda: stack.invalidations)
    return ResponseCache(config.cache, stack)


def parse_backend(spec: str) -> tuple[str, str]:
    """``"node-1=http://127.0.0.1:11435"`` or ``"http://host:port"`` -> (id, url)."""
    node_id, sep, url = spec.partition("=")
    if not sep:
        node_id, url = "", spec
    url = url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"backend {spec!r} must be an http(s) URL, optionally ID=URL")
    return node_id or parts.netloc, url


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.view = ClusterView()
        for spec in config.gateway.backends:
            self.view.add(*parse_backend(spec))
        self.metrics = GatewayMetrics()
        self.upstream = Upstream(config.gateway, config.security)
        # API keys (SECURITY.md): no guard at all unless a keys file is configured
        self.guard = _guard(config, self.metrics)
        sched = config.scheduler
        self.flags = admin_flags.gateway_flags(config)
        self.scheduler = admin_flags.flagged_scheduler(self.flags, self.view, sched.queue)
        queue = AdmissionQueue(max_waiting=sched.max_waiting,
                               max_per_key=sched.max_waiting_per_key) if sched.queue else None
        prewarmer = Prewarmer(interval_s=sched.prewarm_interval) if sched.prewarm else None
        if prewarmer is not None:
            self.metrics.read_prewarm(lambda: (prewarmer.loads, prewarmer.used, prewarmer.wasted))
        self.router = observed_router(self.metrics, self.scheduler, self.view, queue,
                                      window=config.alerts.window, prewarmer=prewarmer)
        admin_flags.follow(self.flags, self.router, self.metrics, self.scheduler)
        self.resilience = Resilience(config.resilience, self.view, self.metrics)
        self.path = RequestPath(config.gateway, self.router, self.upstream, self.metrics,
                                resilience=self.resilience)
        # cluster mode: the view follows etcd; health checks poll only what etcd does not say
        self.cluster = wiring.ClusterMode(config, self.view, self.metrics, self._capacity_changed)
        self.health = HealthChecker(config.gateway, self.view, self.upstream, self.metrics,
                                    on_change=self._capacity_changed, resilience=self.resilience,
                                    nodes=self.cluster.polled)
        self.draining = False  # SIGTERM: stopping; in-flight requests finish (gateway.drain)
        self._health_task: asyncio.Task[None] | None = None
        self.prewarm: PrewarmLoop | None = None  # with scheduler.prewarm
        self._prewarm_task: asyncio.Task[None] | None = None
        self.max_body = config.gateway.max_body_bytes
        self.cache = _response_cache(config, self.metrics)  # None: [cache] tiers = []
        self.monitor = Monitor(self)  # samples, alert rules, the dashboard (docs/metrics.md)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[request_ids.middleware, error_middleware],
                              client_max_size=self.max_body)
        add, get = app.router.add_route, app.router.add_get  # GET routes answer HEAD too
        get("/", root)
        get("/api/version", self.version)
        get("/api/tags", self.tags)
        get("/api/ps", self.ps)
        add("POST", "/api/show", self.show)
        add("POST", "/api/pull", self.pull)
        add("POST", "/api/chat", self.chat)
        add("POST", "/api/generate", self.generate)
        add("POST", "/api/embed", self.embed)
        add("POST", "/api/embeddings", self.embeddings)
        for name in _UNSUPPORTED:
            add("*", f"/api/{name}", self.unsupported)
        get("/health", self.healthz)
        get("/metrics", self.metrics_endpoint)
        get("/admin/nodes", self.nodes)
        admin_flags.add_routes(app, self.flags, self.scheduler.served)
        self._add_openai_routes(app)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._drain)
        app.on_cleanup.append(self._stop)
        from ollamamax.dashboard import routes as dashboard

        dashboard.install(app, self.monitor)
        if self.guard is not None:
            self.guard.install(app)
        return app

    def _add_openai_routes(self, app: web.Application) -> None:
        from ollamamax.gateway import openai_routes

        openai_routes.add_routes(app, self)

    async def _start(self, app: web.Application) -> None:
        if self.cache is not None:
            await self.cache.start()
        await self.cluster.start()
        for sentence in await self.health.tick():  # a warm view before the first request
            log.info("%s", sentence)
        self._health_task = asyncio.create_task(self.health.run(), name="health-checks")
        if self.router.prewarmer is not None:
            self.prewarm = PrewarmLoop(self.path, self.upstream.session,
                                       self.router.prewarmer.interval_s)
            self._prewarm_task = asyncio.create_task(self.prewarm.run(), name="prewarm")

    async def _drain(self, app: web.Application) -> None:
        """The server stopped listening: let requests in flight finish (docs/resilience.md)."""
        self.draining = True
        log.info("%s", await drain(self.path, self.upstream, self.config.gateway.drain_timeout))

    async def _stop(self, app: web.Application) -> None:
        for task in (self._health_task, self._prewarm_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.prewarm is not None:
            await self.prewarm.close()
        await self.cluster.stop()
        if self.cache is not None:
            await self.cache.close()
        await self.path.close()
        await self.upstream.close()

    def _capacity_changed(self) -> None:
        """Telemetry arrived: held requests may fit where slots freed; a model's digest may
        have changed (its cached answers are dropped)."""
        self.path.deliver_ticks()
        if self.cache is not None:
            for digest in self.cache.models_changed(self.view):
                log.info("a model's digest %s was replaced: its cached answers are dropped",
                         digest)

    # -- inference -----------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, self.max_body)
        req = ot.decode(body, ot.ChatRequest)
        return await self.forward(request, "chat", req, "/api/chat", body, ot.wants_stream(req))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, self.max_body)
        req = ot.decode(body, ot.GenerateRequest)
        return await self.forward(request, "generate", req, "/api/generate", body,
                                  ot.wants_stream(req))

    async def embed(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, self.max_body)
        req = ot.decode(body, ot.EmbedRequest)
        return await self.forward(request, "embed", req, "/api/embed", body, False)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, self.max_body)
        req = ot.decode(body, ot.EmbeddingsRequest)
        return await self.forward(request, "embeddings", req, "/api/embeddings", body, False)

    async def show(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, self.max_body)
        req = ot.decode(body, ot.ShowRequest)
        return await self.forward(request, "show", req, "/api/show", body, False)

    async def pull(self, request: web.Request) -> web.StreamResponse:
        """Into one node; the sync planner replicates it from there (gateway.pull)."""
        from ollamamax.gateway import pull

        return await pull.forward(request, self.view, self.upstream,
                                  await read_body(request, self.max_body),
                                  self.config.gateway.connect_timeout)

    async def forward(self, request: web.Request, endpoint: str, req: Request, path: str,
                      body: bytes, stream: bool, adapter: Adapter | None = None,
                      ) -> web.StreamResponse:
        route = route_request(endpoint, req, request.headers, stream)
        cache = self.cache
        if cache is not None and endpoint in cache.endpoints:
            model = req.model_name

            async def send(through: Adapter) -> web.StreamResponse:
                if self.guard is None:
                    return await self.path.forward(request, route, model, path, body, through)
                return await self._forward_as_key(request, route, model, path, body, through)

            return await cache.serve(request, route, getattr(req, "options", None), path, body,
                                     adapter or OllamaPassthrough(), send)
        if self.guard is None:
            return await self.path.forward(request, route, req.model_name, path, body,
                                           adapter or OllamaPassthrough())
        return await self._forward_as_key(request, route, req.model_name, path, body,
                                          adapter or OllamaPassthrough())

    async def _forward_as_key(self, request: web.Request, route: RouteRequest, model: str,
                              path: str, body: bytes, adapter: Adapter) -> web.StreamResponse:
        """The key's name is the request's identity in the admission queue; its tokens are
        charged to its quota once the answer is complete."""
        from ollamamax.security.middleware import KEY

        record = request.get(KEY)
        if record is not None:
            route = dataclasses.replace(route, key=record.name)
        assert self.guard is not None
        return await self.guard.metered(  # type: ignore[no-any-return]
            request, lambda a: self.path.forward(request, route, model, path, body, a), adapter)

    # -- the cluster as one Ollama ---------------------------------------------------------

    async def version(self, request: web.Request) -> web.Response:
        return json_response({"version": OLLAMA_API_VERSION})

    async def tags(self, request: web.Request) -> web.Response:
        return json_response({"models": await self.union_tags()})

    async def union_tags(self) -> list[dict[str, Any]]:
        """Every model some healthy node has, once, the most recently modified copy first."""
        merged: dict[str, dict[str, Any]] = {}
        for _node, models in await self._fan_out("/api/tags"):
            for entry in models:
                key = try_key(entry.get("name") or entry.get("model") or "")
                if not key:
                    continue
                current = merged.get(key)
                if current is None or entry.get("modified_at", "") > current.get("modified_at", ""):
                    merged[key] = entry
        return sorted(merged.values(), key=lambda e: str(e.get("name", "")))

    async def ps(self, request: web.Request) -> web.Response:
        entries = []
        for node_id, models in await self._fan_out("/api/ps"):
            entries.extend({**entry, "node": node_id} for entry in models)
        return json_response({"models": entries})

    async def _fan_out(self, path: str) -> list[tuple[str, list[dict[str, Any]]]]:
        view = self.view
        nodes = [(view.ids[i], view.urls[i]) for i in view.present_nodes() if view.healthy[i]]

        async def one(node_id: str, url: str) -> tuple[str, list[dict[str, Any]]]:
            try:
                status, body = await self.upstream.get_json(
                    url + path, self.config.gateway.health_timeout * 2)
                if status != 200:
                    return node_id, []
                return node_id, list(msgspec.json.decode(body).get("models") or [])
            except Exception as exc:  # noqa: BLE001 - a node that cannot answer is left out
                log.warning("%s: %s failed: %s", node_id, path, exc or type(exc).__name__)
                return node_id, []

        return list(await asyncio.gather(*(one(node_id, url) for node_id, url in nodes)))

    async def unsupported(self, request: web.Request) -> web.Response:
        raise NotFound(f"{request.method} {request.path} is not served by the OllamaMax gateway "
                       "yet; manage models on the nodes (ollamamax models ...)")

    # -- the gateway's own endpoints -------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        view = self.view
        present = view.present_nodes()
        return json_response({"status": "draining" if self.draining else "ok",
                              "version": __version__, "nodes": len(present),
                              "nodes_healthy": sum(1 for i in present if view.healthy[i]),
                              "health_ticks": self.health.ticks, "strategy": self.scheduler.name,
                              "waiting": len(self.router.queue) if self.router.queue else 0})

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def nodes(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        view = self.view
        names = view.model_names

        def models_where(i: int, cells: list[Any]) -> list[str]:
            return sorted(names[m] for m, cell in enumerate(cells) if cell[i])

        return json_response({"nodes": [
            {"id": view.ids[i], "url": view.urls[i], "healthy": bool(view.healthy[i]),
             "draining": bool(view.draining[i]), "ejected": bool(view.ejected[i]),
             "breaker": self.resilience.outliers.state_name(i),
             "models": models_where(i, view.has),
             "loaded": models_where(i, view.loaded), "in_flight": int(view.in_flight[i]),
             "served": int(view.served[i]), "queue_depth": int(view.queue_depth[i]),
             "last_error": view.last_error[i],
             "checked_s_ago": round(now - float(view.updated_at[i]), 3) if view.updated_at[i] else None,
             "engine": view.info[i].get("engine")}
            for i in view.present_nodes()]})
