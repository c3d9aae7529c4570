"""The gateway's side of the cache: answer from it, record into it, say which it was.

`ResponseCache.serve` wraps one request the gateway would forward. A hit is written back as
it was recorded: the same bytes, as one body or (for a streaming request) as a stream. A
miss is forwarded through a `Recording` adapter that keeps a copy of every byte the client
receives; only a complete, successful answer is recorded. Every response the cache looked at
carries ``X-OllamaMax-Cache``: ``hit; tier=<name>``, ``miss``, ``refresh`` (the client sent
``Cache-Control: no-cache``) or ``miss; reason=no-digest`` (the model's version is not known,
or nodes disagree on it: not cached).

Identical requests that arrive while the first is still being answered wait for it and get
its recorded answer (``hit; tier=in-flight``; request coalescing): a retrieval pipeline
that sends the same chunk twice at once asks the node once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from ollamamax.api.http import JSON
from ollamamax.cache import keys, tier_class
from ollamamax.cache.digests import ModelDigests
from ollamamax.cache.keys import CACHE_STATE, HEADER, Mode
from ollamamax.cache.stack import CacheStack
from ollamamax.cache.tier import Tier
from ollamamax.config import CacheConfig
from ollamamax.gateway.adapters import Adapter, OpenAIAdapter

if TYPE_CHECKING:
    from ollamamax.scheduler import ClusterView, RouteRequest

IN_FLIGHT = "in-flight"  # the hit's "tier": the answer an identical request was recording
Forward = Callable[[Adapter], Awaitable[web.StreamResponse]]


def open_tiers(conf: CacheConfig, clock: Callable[[], float] = time.monotonic) -> list[Tier]:
    """The configured tiers, in order, not yet started."""
    settings: dict[str, dict[str, Any]] = {
        "memory": {"max_bytes": conf.memory_max_bytes, "ttl": conf.memory_ttl},
        "disk": {"max_bytes": conf.disk_max_bytes, "ttl": conf.disk_ttl,
                 "directory": conf.disk_dir},
        "redis": {"max_bytes": conf.redis_max_bytes, "ttl": conf.redis_ttl,
                  "url": conf.redis_url, "prefix": conf.redis_prefix},
    }
    return [tier_class(name)(clock=clock, **settings[name]) for name in conf.tiers]


class ResponseCache:
    def __init__(self, conf: CacheConfig, stack: CacheStack) -> None:
        self.conf = conf
        self.stack = stack
        self.digests = ModelDigests()
        # the endpoints worth a second look; anything else costs one set lookup
        self.endpoints = frozenset((keys.EMBEDDINGS if conf.embeddings else frozenset())
                                   | keys.GENERATIONS)
        self._embeddings, self._generations = conf.embeddings, conf.generations
        # answers being recorded: an identical request waits for one instead of asking a node
        self._in_flight: dict[bytes, asyncio.Future[bytes | None]] = {}

    async def start(self) -> None:
        await self.stack.start()

    async def close(self) -> None:
        await self.stack.close()

    def models_changed(self, view: ClusterView) -> list[str]:
        """Telemetry arrived: learn digests; drop the entries of every digest replaced."""
        replaced = self.digests.refresh(view.ids, view.info, view.present_nodes())
        for digest in replaced:
            self.stack.invalidate(digest)
        return replaced

    async def serve(self, request: web.Request, route: RouteRequest, options: Any, path: str,
                    body: bytes, adapter: Adapter, forward: Forward) -> web.StreamResponse:
        mode = keys.mode(route.endpoint, options, request.headers,
                         embeddings=self._embeddings, generations=self._generations)
        if mode is Mode.SKIP:
            return await forward(adapter)
        digest = self.digests.get(route.model)
        if digest is None:
            return await forward(Recording(request, adapter, "miss; reason=no-digest", 0))
        openai = isinstance(adapter, OpenAIAdapter)
        raw = await request.read() if openai else body  # the client's own body (aiohttp keeps it)
        if not raw:
            return await forward(Recording(request, adapter, "miss; reason=no-body", 0))
        try:
            key = keys.cache_key("openai" if openai else "ollama", path, route.stream, digest,
                                 raw)
        except msgspec.DecodeError:  # the API's own decoder took it; ours did not: not cached
            return await forward(Recording(request, adapter, "miss; reason=body", 0))
        if mode is Mode.LOOKUP:
            found = await self.stack.lookup(key)
            if found is None and key in self._in_flight:  # the same request is being answered
                value = await asyncio.shield(self._in_flight[key])
                found = (value, IN_FLIGHT) if value is not None else None
            if found is not None:
                return await _replay(request, found[0], f"hit; tier={found[1]}", route.stream,
                                     adapter)
        recording = Recording(request, adapter, "miss" if mode is Mode.LOOKUP else "refresh",
                              self.conf.max_entry_bytes)
        waiting = self._in_flight.setdefault(key, asyncio.get_running_loop().create_future())
        value = None
        try:
            response = await forward(recording)
            value = recording.value()
            if value is not None:
                self.stack.record(key, value, digest)
            return response
        finally:
            if self._in_flight.get(key) is waiting and not waiting.done():
                del self._in_flight[key]
                waiting.set_result(value)  # None: the waiters ask a node themselves


async def _replay(request: web.Request, value: bytes, header: str, stream: bool,
                  adapter: Adapter) -> web.StreamResponse:
    if not stream:
        return web.Response(body=value, content_type=JSON, headers={HEADER: header})
    response = web.StreamResponse(headers={"Content-Type": adapter.stream_content_type,
                                           HEADER: header})
    await response.prepare(request)
    await response.write(value)
    await response.write_eof()
    return response


class Recording:
    """An adapter around the real one that keeps what the client is sent (up to `limit`
    bytes; 0: nothing) and puts the cache header on the response (a stream's is added by the
    request path, from the request's `CACHE_STATE`)."""

    __slots__ = ("_done", "_header", "_inner", "_parts", "_size", "limit")

    def __init__(self, request: web.Request, inner: Adapter, header: str, limit: int) -> None:
        self._inner = inner
        self._header = header
        request[CACHE_STATE] = header
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._done = False

    @property
    def stream_content_type(self) -> str:
        return self._inner.stream_content_type

    def whole(self, status: int, body: bytes) -> web.Response:
        response = self._inner.whole(status, body)
        response.headers[HEADER] = self._header
        if status == 200 and isinstance(response.body, bytes):
            self._keep(response.body)
            self._done = True
        return response

    def feed(self, data: bytes) -> bytes:
        out = self._inner.feed(data)
        self._keep(out)
        return out

    def end(self) -> bytes:
        tail = self._inner.end()
        self._keep(tail)
        self._done = True
        return tail

    def error(self, message: str) -> bytes:
        self.limit = 0  # a broken stream is never recorded
        return self._inner.error(message)

    def value(self) -> bytes | None:
        """The complete answer, or None (failed, cut, too large, or not recording)."""
        if not self._done or self.limit <= 0 or self._size > self.limit:
            return None
        return b"".join(self._parts)

    def _keep(self, data: bytes) -> None:
        if self.limit <= 0 or not data:
            return
        self._size += len(data)
        if self._size <= self.limit:
            self._parts.append(data)
        else:
            self._parts = []
            self.limit = 0
