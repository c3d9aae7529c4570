"""The node process: the Ollama API of one machine's engine, plus health and telemetry.

    POST /api/chat /api/generate /api/embed /api/embeddings /api/show
    HEAD|POST /api/blobs/:digest, POST /api/create (files)   Ollama's model creation API,
                          on engines with a store (sim): how sync installs into an Ollama
    POST /api/pull    from a registry into the node's store, streamed as Ollama does
    GET  /api/tags /api/ps /api/version  /  (and HEAD /)
    GET  /health      200 when the engine answers, else 503
    GET  /telemetry   identity, models, loaded models with slots and expiry, queue, memory
    GET  /metrics     Prometheus text
    POST /admin/drain     take no new inference requests (503, so gateways send them
                          elsewhere); those running finish. DELETE /admin/drain undoes it.
                          SIGTERM drains too, then waits for the node's own requests
                          (node.drain_timeout) before the process exits.
    GET  /cluster/blobs/sha256:<hex>[/chunks]   the blob service for other nodes (sync.blobs)

With `security.cluster_token` every path but /health needs the token (`security.cluster`):
only gateways and other nodes of the cluster may call a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ollamamax import OLLAMA_API_VERSION
from ollamamax.api import ollama_types as ot
from ollamamax.api.errors import error_middleware
from ollamamax.api.http import NDJSON, dumps, json_response, read_body, root
from ollamamax.config import NodeConfig, SecurityConfig, SyncConfig
from ollamamax.errors import NotFound, OllamaMaxError, Unavailable
from ollamamax.metrics import CONTENT_TYPE, NodeMetrics
from ollamamax.models.registry import Puller
from ollamamax.models.store import ModelStore
from ollamamax.node import pull, streams, telemetry
from ollamamax.node.engines.base import Chunk, Engine
from ollamamax.observability import request_ids
from ollamamax.sync import blobs
from ollamamax.sync.chunks import PartialFile

log = logging.getLogger(__name__)

MAX_BODY = 64 << 20


class NodeAgent:
    def __init__(self, config: NodeConfig, engine: Engine,
                 security: SecurityConfig | None = None, *,
                 sync: SyncConfig | None = None) -> None:
        self.config = config
        self.cluster_token = security.token() if security is not None else ""
        self.engine = engine
        self.metrics = NodeMetrics()
        # the blob service (docs/sync.md) serves this store, and the chunks of transfers
        # under way (hex -> partial file, filled by the node's sync.transfer.Fetcher)
        self.sync_config = sync or SyncConfig()
        self.blob_store: ModelStore = (getattr(engine, "store", None)
                                       or ModelStore(os.path.expanduser(config.models_dir)))
        self.partials: dict[str, PartialFile] = {}
        self.puller: Puller | None = None  # POST /api/pull; made on first use
        self.node_id = config.id or f"{socket.gethostname()}-{config.listen.rpartition(':')[2]}"
        self.url = config.advertise_url
        self.in_flight = 0
        self.draining = False
        self.started = time.monotonic()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[request_ids.middleware, error_middleware],
                              client_max_size=MAX_BODY)
        if self.cluster_token:
            from ollamamax.security.cluster import node_middleware

            app.middlewares.append(node_middleware(self.cluster_token))
        app.router.add_get("/", root)
        app.router.add_get("/api/version", self.version)
        app.router.add_get("/api/tags", self.tags)
        app.router.add_get("/api/ps", self.ps)
        app.router.add_route("POST", "/api/show", self.show)
        app.router.add_route("POST", "/api/pull", self.pull)
        app.router.add_route("POST", "/api/chat", self.chat)
        app.router.add_route("POST", "/api/generate", self.generate)
        app.router.add_route("POST", "/api/embed", self.embed)
        app.router.add_route("POST", "/api/embeddings", self.embeddings)
        app.router.add_route("HEAD", "/api/blobs/{digest}", self.blob_head)
        app.router.add_route("POST", "/api/blobs/{digest}", self.blob_upload)
        app.router.add_route("POST", "/api/create", self.create)
        app.router.add_get("/health", self.health)
        app.router.add_get("/telemetry", self.telemetry)
        app.router.add_get("/metrics", self.metrics_endpoint)
        app.router.add_post("/admin/drain", self.drain)
        app.router.add_delete("/admin/drain", self.undrain)
        self.blob_service = blobs.add_routes(
            app, self.blob_store, self.cluster_token, chunk_size=self.sync_config.chunk_size,
            upload_mbps=self.sync_config.upload_mbps, partials=self.partials,
            metrics=self.metrics.sync)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._close)
        request_ids.install(app)  # answers echo X-Request-Id; log lines carry it
        return app

    async def _start(self, app: web.Application) -> None:
        await self.engine.start()

    async def _close(self, app: web.Application) -> None:
        await self.engine.close()

    # -- informational endpoints -------------------------------------------------------

    async def version(self, request: web.Request) -> web.Response:
        return json_response({"version": OLLAMA_API_VERSION})

    async def tags(self, request: web.Request) -> web.Response:
        return json_response({"models": await self.engine.tags()})

    async def ps(self, request: web.Request) -> web.Response:
        return json_response({"models": await self.engine.ps()})

    async def show(self, request: web.Request) -> web.Response:
        req = ot.decode(await read_body(request, MAX_BODY), ot.ShowRequest)
        return json_response(await self.engine.show(req))

    async def pull(self, request: web.Request) -> web.StreamResponse:
        """Ollama's pull from a registry into this node's store (docs/models.md)."""
        if self.puller is None:
            self.puller = Puller(self.blob_store, self.sync_config)
        install = self._install_pulled if self.engine.name == "ollama" else None
        return await pull.answer(request, self.puller, await read_body(request, MAX_BODY), install)

    async def _install_pulled(self, name: str) -> str:
        """The ``ollama`` engine serves what its Ollama has: hand it the pulled model."""
        from ollamamax.sync.install import OllamaInstaller

        installer = OllamaInstaller(self.config.engine_url)
        try:
            return await installer.install(self.blob_store, name)
        finally:
            await installer.close()

    async def health(self, request: web.Request) -> web.Response:
        ok = await self.engine.healthy()
        status = ("draining" if self.draining else "ok") if ok else "unhealthy"
        return json_response({"status": status, "node_id": self.node_id},
                             status=200 if ok else 503)

    async def telemetry(self, request: web.Request) -> web.Response:
        await self.engine.refresh_status()
        snapshot = telemetry.snapshot(
            self.node_id, self.engine.name, self.url, await self.engine.tags(),
            self.engine.load_status(), self.in_flight, self.started)
        snapshot["draining"] = self.draining
        snapshot["disk"] = telemetry.disk(self.config.models_dir)
        return json_response(snapshot)

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    # -- Ollama's model creation API (sim engine; sync installs through it) -------------------

    def _creator(self) -> Any:
        if not hasattr(self.engine, "create"):
            raise NotFound(f"the {self.engine.name} engine does not create models")
        return self.engine

    async def blob_head(self, request: web.Request) -> web.Response:
        found = await self._creator().has_blob(request.match_info["digest"])
        return web.Response(status=200 if found else 404)

    async def blob_upload(self, request: web.Request) -> web.Response:
        await self._creator().receive_blob(request.match_info["digest"],
                                           request.content.iter_chunked(1 << 20))
        return web.Response(status=201)

    async def create(self, request: web.Request) -> web.StreamResponse:
        from ollamamax.sync.install import CreateRequest

        body = ot.decode(await read_body(request, MAX_BODY), CreateRequest)
        statuses = await self._creator().create(body.model_name, body.files or {})
        if body.stream is False:
            return json_response(statuses[-1])
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)
        for status in statuses:
            await response.write(dumps(status) + b"\n")
        await response.write_eof()
        return response

    # -- drain -----------------------------------------------------------------------------

    async def drain(self, request: web.Request) -> web.Response:
        if not self.draining:
            log.info("draining: new requests are refused (503); %d in flight finish",
                     self.in_flight)
        self.draining = True
        return json_response({"draining": True, "in_flight": self.in_flight})

    async def undrain(self, request: web.Request) -> web.Response:
        if self.draining:
            log.info("no longer draining: taking requests again")
        self.draining = False
        return json_response({"draining": False, "in_flight": self.in_flight})

    async def drained(self, timeout: float, poll: float = 0.05) -> bool:
        """Drain, and wait until no request of this node runs (False if some still do after
        `timeout` seconds)."""
        self.draining = True
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            if not self.in_flight:
                return True
            await asyncio.sleep(poll)
        return not self.in_flight

    # -- inference -----------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        req = ot.decode(await read_body(request, MAX_BODY), ot.ChatRequest)
        return await self._answer(request, "chat", self.engine.chat(req),
                                  ot.wants_stream(req), streams.merge_chat)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        req = ot.decode(await read_body(request, MAX_BODY), ot.GenerateRequest)
        return await self._answer(request, "generate", self.engine.generate(req),
                                  ot.wants_stream(req), streams.merge_generate)

    async def embed(self, request: web.Request) -> web.Response:
        req = ot.decode(await read_body(request, MAX_BODY), ot.EmbedRequest)
        with self._counted("embed"):
            return json_response(await self.engine.embed(req))

    async def embeddings(self, request: web.Request) -> web.Response:
        legacy = ot.decode(await read_body(request, MAX_BODY), ot.EmbeddingsRequest)
        req = ot.EmbedRequest(model=legacy.model_name, input=legacy.prompt or "",
                              options=legacy.options, keep_alive=legacy.keep_alive)
        with self._counted("embeddings"):
            result = await self.engine.embed(req)
        vectors = result.get("embeddings") or [[]]
        return json_response({"embedding": vectors[0] if legacy.prompt else []})

    async def _answer(self, request: web.Request, endpoint: str, chunks: AsyncIterator[Chunk],
                      stream: bool, merge: Any) -> web.StreamResponse:
        with self._counted(endpoint):
            async with contextlib.aclosing(chunks):  # type: ignore[type-var]
                if not stream:
                    return json_response(await merge(chunks))
                # The first chunk comes before the headers, so an early failure (unknown
                # model, full queue) is still an HTTP error a gateway can retry elsewhere.
                first = await anext(chunks)
                response = web.StreamResponse(headers={"Content-Type": NDJSON})
                await response.prepare(request)
                await response.write(dumps(first) + b"\n")
                try:
                    async for chunk in chunks:
                        await response.write(dumps(chunk) + b"\n")
                except OllamaMaxError as exc:
                    await response.write(dumps({"error": exc.message}) + b"\n")
                await response.write_eof()
                return response

    @contextlib.contextmanager
    def _counted(self, endpoint: str) -> Any:
        if self.draining:
            self.metrics.requests.labels(endpoint, "503").inc()
            raise Unavailable(f"node {self.node_id} is draining: it takes no new requests")
        self.in_flight += 1
        self.metrics.in_flight.inc()
        started = time.perf_counter()
        status = "200"
        try:
            yield
        except OllamaMaxError as exc:
            status = str(exc.status)
            raise
        except BaseException:
            status = "500"
            raise
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, status).inc()
            elapsed = time.perf_counter() - started
            self.metrics.duration.labels(endpoint).observe(elapsed)
            log.debug("%s answered %s in %.1f ms", endpoint, status, elapsed * 1000)
