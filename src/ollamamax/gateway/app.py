"""The gateway: one Ollama (and OpenAI) endpoint in front of many nodes.

    Ollama  POST /api/chat /api/generate /api/embed /api/embeddings /api/show
            GET  /api/tags (union over nodes) /api/ps (what is loaded where) /api/version  /
    OpenAI  POST /v1/chat/completions /v1/completions /v1/embeddings
            GET  /v1/models /v1/models/{model}
    Own     GET  /health /metrics /admin/nodes
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
from ollamamax.config import Config
from ollamamax.errors import ConfigError, NotFound
from ollamamax.gateway.adapters import Adapter, OllamaPassthrough
from ollamamax.gateway.health import HealthChecker
from ollamamax.gateway.proxy import RequestPath
from ollamamax.gateway.upstream import Upstream
from ollamamax.metrics import CONTENT_TYPE, GatewayMetrics
from ollamamax.models.names import model_key, try_key
from ollamamax.scheduler import ClusterView, RouteRequest, Scheduler

log = logging.getLogger(__name__)

_UNSUPPORTED = ("pull", "push", "create", "delete", "copy")


# Clients send the same few model names again and again; invalid names raise and are not cached.
_model_key = functools.lru_cache(maxsize=4096)(model_key)


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
        self.scheduler = Scheduler(config.scheduler.strategy)
        self.path = RequestPath(config.gateway, self.view, self.scheduler, self.upstream,
                                self.metrics)
        self.health = HealthChecker(config.gateway, self.view, self.upstream, self.metrics)
        self._health_task: asyncio.Task[None] | None = None
        self.max_body = config.gateway.max_body_bytes

    def app(self) -> web.Application:
        app = web.Application(middlewares=[error_middleware], client_max_size=self.max_body)
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
        self._add_openai_routes(app)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    def _add_openai_routes(self, app: web.Application) -> None:
        from ollamamax.gateway import openai_routes

        openai_routes.add_routes(app, self)

    async def _start(self, app: web.Application) -> None:
        for sentence in await self.health.tick():  # a warm view before the first request
            log.info("%s", sentence)
        self._health_task = asyncio.create_task(self.health.run(), name="health-checks")

    async def _stop(self, app: web.Application) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self.upstream.close()

    # -- inference -----------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, self.max_body)
        req = ot.decode(body, ot.ChatRequest)
        return await self.forward(request, "chat", req.model_name, "/api/chat", body,
                                  ot.wants_stream(req))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, self.max_body)
        req = ot.decode(body, ot.GenerateRequest)
        return await self.forward(request, "generate", req.model_name, "/api/generate", body,
                                  ot.wants_stream(req))

    async def embed(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, self.max_body)
        req = ot.decode(body, ot.EmbedRequest)
        return await self.forward(request, "embed", req.model_name, "/api/embed", body, False)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, self.max_body)
        req = ot.decode(body, ot.EmbeddingsRequest)
        return await self.forward(request, "embeddings", req.model_name, "/api/embeddings",
                                  body, False)

    async def show(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, self.max_body)
        req = ot.decode(body, ot.ShowRequest)
        return await self.forward(request, "show", req.model_name, "/api/show", body, False)

    async def forward(self, request: web.Request, endpoint: str, name: str, path: str,
                      body: bytes, stream: bool, adapter: Adapter | None = None,
                      ) -> web.StreamResponse:
        route = RouteRequest(_model_key(name), endpoint, stream)
        return await self.path.forward(request, route, name, path, body,
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
        nodes = [n for n in self.view.nodes.values() if n.healthy]

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

        return list(await asyncio.gather(*(one(n.id, n.url) for n in nodes)))

    async def unsupported(self, request: web.Request) -> web.Response:
        raise NotFound(f"{request.method} {request.path} is not served by the OllamaMax gateway "
                       "yet; manage models on the nodes (ollamamax models ...)")

    # -- the gateway's own endpoints -------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        healthy = sum(1 for n in self.view.nodes.values() if n.healthy)
        return json_response({"status": "ok", "version": __version__, "nodes": len(self.view.nodes),
                              "nodes_healthy": healthy, "health_ticks": self.health.ticks})

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def nodes(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        return json_response({"nodes": [
            {"id": n.id, "url": n.url, "healthy": n.healthy, "models": sorted(n.models),
             "loaded": sorted(n.loaded), "in_flight": n.in_flight, "served": n.served,
             "queue_depth": n.queue_depth, "last_error": n.last_error,
             "checked_s_ago": round(now - n.updated_at, 3) if n.updated_at else None,
             "engine": n.info.get("engine")}
            for n in self.view.nodes.values()]})
