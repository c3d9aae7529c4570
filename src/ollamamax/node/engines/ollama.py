"""The ``ollama`` engine: a stock Ollama server at ``--engine-url`` does the work.

Requests are forwarded as Ollama API calls (always streamed from Ollama, merged by the node
when the client did not ask for a stream). What is loaded comes from Ollama's ``/api/ps``;
busy slots are the requests this node has in flight, since Ollama does not report them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

from ollamamax.api.ollama_types import ChatRequest, EmbedRequest, GenerateRequest, ShowRequest
from ollamamax.config import NodeConfig
from ollamamax.errors import (
    BadRequest,
    EngineError,
    EngineOverloaded,
    NotFound,
    OllamaMaxError,
)
from ollamamax.models.names import try_key
from ollamamax.node.engines.base import Chunk, Engine

_PS_TTL = 1.0  # seconds an /api/ps answer is reused for telemetry


class OllamaEngine(Engine):
    name = "ollama"

    def __init__(self, config: NodeConfig) -> None:
        super().__init__(config)
        self.base = config.engine_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._busy: Counter[str] = Counter()
        self._ps: list[dict[str, Any]] = []
        self._ps_at = 0.0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=5))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise EngineError("engine not started")
        return self._session

    async def healthy(self) -> bool:
        try:
            async with asyncio.timeout(2), self.session.get(self.base + "/") as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def tags(self) -> list[dict[str, Any]]:
        return list((await self._get("/api/tags")).get("models") or [])

    async def ps(self) -> list[dict[str, Any]]:
        self._ps = list((await self._get("/api/ps")).get("models") or [])
        self._ps_at = time.monotonic()
        return self._ps

    async def show(self, request: ShowRequest) -> dict[str, Any]:
        return await self._post_json("/api/show", request)

    async def embed(self, request: EmbedRequest) -> dict[str, Any]:
        key = try_key(request.model_name)
        self._busy[key] += 1
        try:
            return await self._post_json("/api/embed", request)
        finally:
            self._busy[key] -= 1

    def chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        return self._stream("/api/chat", request)

    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        return self._stream("/api/generate", request)

    async def refresh_status(self) -> None:
        if time.monotonic() - self._ps_at > _PS_TTL:
            try:
                await self.ps()
            except OllamaMaxError:
                self._ps_at = time.monotonic()  # ask again after the TTL, not on every call

    def load_status(self) -> dict[str, Any]:
        loaded = []
        for entry in self._ps:
            key = try_key(entry.get("name") or entry.get("model") or "")
            loaded.append({"name": key, "size": entry.get("size", 0), "busy": self._busy[key],
                           "slots": self.config.num_parallel, "queued": 0,
                           "expires_at": entry.get("expires_at")})
        return {"loaded": loaded, "queue_depth": 0, "max_queue": self.config.max_queue,
                "max_loaded": self.config.max_loaded, "num_parallel": self.config.num_parallel,
                "num_ctx": self.config.num_ctx}

    # -- HTTP ------------------------------------------------------------------------------

    async def _get(self, path: str) -> dict[str, Any]:
        try:
            async with self.session.get(self.base + path) as r:
                return await _json_or_raise(r)
        except aiohttp.ClientError as exc:
            raise EngineError(f"ollama at {self.base}: {exc}") from None

    async def _post_json(self, path: str, request: msgspec.Struct) -> dict[str, Any]:
        try:
            async with self.session.post(self.base + path, data=msgspec.json.encode(request),
                                         headers={"Content-Type": "application/json"}) as r:
                return await _json_or_raise(r)
        except aiohttp.ClientError as exc:
            raise EngineError(f"ollama at {self.base}: {exc}") from None

    async def _stream(self, path: str, request: ChatRequest | GenerateRequest,
                      ) -> AsyncIterator[Chunk]:
        body = msgspec.json.encode(msgspec.structs.replace(request, stream=True))
        key = try_key(request.model_name)
        self._busy[key] += 1
        try:
            async with self.session.post(self.base + path, data=body,
                                         headers={"Content-Type": "application/json"}) as r:
                if r.status != 200:
                    await _json_or_raise(r)
                async for line in r.content:
                    if not line.strip():
                        continue
                    chunk = msgspec.json.decode(line)
                    if "error" in chunk:
                        raise EngineError(str(chunk["error"]))
                    yield chunk
        except aiohttp.ClientError as exc:
            raise EngineError(f"ollama at {self.base}: {exc}") from None
        finally:
            self._busy[key] -= 1


async def _json_or_raise(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await response.read()
    try:
        data = msgspec.json.decode(body) if body else {}
    except msgspec.DecodeError:
        data = {"error": body.decode("utf-8", "replace")[:200]}
    if response.status == 200:
        return data
    message = str(data.get("error", f"HTTP {response.status}")) if isinstance(data, dict) else ""
    if response.status == 404:
        raise NotFound(message)  # keep Ollama's own sentence
    if response.status == 400:
        raise BadRequest(message)
    if response.status == 503:
        raise EngineOverloaded(message)
    raise EngineError(f"ollama answered HTTP {response.status}: {message}")
