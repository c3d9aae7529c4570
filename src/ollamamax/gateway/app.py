"""The gateway: one Ollama (and OpenAI) endpoint in front of many nodes.

    Ollama  POST /api/chat /api/generate /api/embed /api/embeddings /api/show
            GET  /api/tags (union over nodes) /api/ps (what is loaded where) /api/version  /
    OpenAI  POST /v1/chat/completions /v1/completions /v1/embeddings
            GET  /v1/models /v1/models/{model}
    Own     GET  /health /metrics /admin/nodes
            GET /admin/flags, PUT /admin/flags/{name}, POST /admin/flags/{name}/rollback
            GET  /dashboard /dashboard/events /admin/status /admin/alerts (dashboard.routes)
"""

from __future__ import annotations

import asyncio
import contextlib
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
from ollamamax.scheduler import ClusterView
from ollamamax.scheduler.prewarm import Prewarmer
from ollamamax.scheduler.queue import AdmissionQueue

log = logging.getLogger(__name__)

_UNSUPPORTED = ("pull", "push", "create", "delete", "copy")


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
        self.upstream = Upstream(config.gateway)
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
        return app

    def _add_openai_routes(self, app: web.Application) -> None:
        from ollamamax.gateway import openai_routes

        openai_routes.add_routes(app, self)

    async def _start(self, app: web.Application) -> None:
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
        await self.path.close()
        await self.upstream.close()

    def _capacity_changed(self) -> None:
        """Telemetry arrived: held requests may fit where slots freed."""
        self.path.deliver_ticks()

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

    async def forward(self, request: web.Request, endpoint: str, req: Request, path: str,
                      body: bytes, stream: bool, adapter: Adapter | None = None,
                      ) -> web.StreamResponse:
        route = route_request(endpoint, req, request.headers, stream)
        return await self.path.forward(request, route, req.model_name, path, body,
                                       adapter or OllamaPassthrough())

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
