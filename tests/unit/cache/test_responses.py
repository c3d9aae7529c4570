"""The gateway's side of the cache without a network: record, replay, coalesce, refuse."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import make_mocked_request

from ollamamax.cache.memory import MemoryTier
from ollamamax.cache.responses import ResponseCache
from ollamamax.cache.stack import CacheStack
from ollamamax.config import CacheConfig
from ollamamax.gateway.adapters import OllamaPassthrough
from ollamamax.scheduler import RouteRequest

BODY = b'{"model":"m:1b","input":"a chunk"}'
ANSWER = b'{"model":"m:1b","embeddings":[[0.25,0.5]]}'
ROUTE = RouteRequest(model="m:1b", endpoint="embed", stream=False)


def make_cache() -> ResponseCache:
    cache = ResponseCache(CacheConfig(), CacheStack([MemoryTier(max_bytes=1 << 20, ttl=0)]))
    cache.digests.current = {"m:1b": "sha256:aa"}
    return cache


class Node:
    """Stands in for the request path: answers after `gate` opens, counting calls."""

    def __init__(self, status: int = 200, answer: bytes = ANSWER) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.status, self.answer = status, answer

    async def forward(self, adapter):
        self.calls += 1
        await self.gate.wait()
        return adapter.whole(self.status, self.answer)


async def serve(cache, node, headers=None, route=ROUTE):
    request = make_mocked_request("POST", "/api/embed", headers=headers or {})
    return await cache.serve(request, route, None, "/api/embed", BODY, OllamaPassthrough(),
                             node.forward)


async def test_a_miss_is_recorded_and_the_next_is_a_hit_with_the_same_bytes():
    cache, node = make_cache(), Node()
    first = await serve(cache, node)
    second = await serve(cache, node)
    assert first.headers["X-OllamaMax-Cache"] == "miss"
    assert second.headers["X-OllamaMax-Cache"] == "hit; tier=memory"
    assert second.body == first.body == ANSWER
    assert node.calls == 1


async def test_identical_requests_in_flight_ask_the_node_once():
    cache, node = make_cache(), Node()
    node.gate.clear()
    first = asyncio.create_task(serve(cache, node))
    await asyncio.sleep(0)
    second = asyncio.create_task(serve(cache, node))
    await asyncio.sleep(0.01)
    node.gate.set()
    a, b = await first, await second
    assert node.calls == 1
    assert b.headers["X-OllamaMax-Cache"] == "hit; tier=in-flight" and b.body == a.body


async def test_errors_are_not_recorded():
    cache, node = make_cache(), Node(status=500, answer=b'{"error":"boom"}')
    await serve(cache, node)
    again = await serve(cache, node)
    assert again.headers["X-OllamaMax-Cache"] == "miss" and node.calls == 2


async def test_a_model_without_a_known_digest_is_not_cached():
    cache, node = make_cache(), Node()
    other = RouteRequest(model="unknown:1b", endpoint="embed", stream=False)
    first = await serve(cache, node, route=other)
    await serve(cache, node, route=other)
    assert first.headers["X-OllamaMax-Cache"] == "miss; reason=no-digest"
    assert node.calls == 2


async def test_no_cache_refreshes_the_recorded_answer():
    cache, node = make_cache(), Node()
    await serve(cache, node)
    node.answer = b'{"model":"m:1b","embeddings":[[1.0,0.0]]}'
    fresh = await serve(cache, node, {"Cache-Control": "no-cache"})
    replay = await serve(cache, node)
    assert fresh.headers["X-OllamaMax-Cache"] == "refresh"
    assert replay.body == node.answer and node.calls == 2
