"""The shared tier (L3): Redis, so gateways answer from each other's recorded answers.

Layout under `prefix` (default ``ollamamax:cache:``):

    e:<key hex>          an answer (a string, with the tier's TTL)
    d:<digest>           the set of entry keys recorded for a model digest
    dead:<digest>        a tombstone: this digest was invalidated (kept `TOMBSTONE_S`)
    invalidate           the pub/sub channel invalidations are announced on

A put and an invalidation are each one Lua script (atomic on the server): a put for a digest
that has a tombstone is refused, so a gateway that has not yet seen a model change cannot
write an answer of the new model under the old digest for the others to read. An
invalidation deletes every entry of the digest, leaves the tombstone and publishes the
digest; every gateway subscribed drops the digest from its own memory and disk tiers too.

The byte bound is the server's: when it has no ``maxmemory`` the tier gives it `max_bytes`
(if at least `MIN_SERVER_BYTES`) with the ``allkeys-lfu`` policy (Redis's own
frequency-aware eviction); a server already limited (or one that refuses ``CONFIG``) is
left as it is. `bytes` and `evictions` are the server's ``used_memory`` and
``evicted_keys``, read every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ollamamax.cache.tier import Tier

log = logging.getLogger(__name__)

TOMBSTONE_S = 3600  # longer than any gateway takes to see a model change
STATS_S = 5.0  # how often the server's memory and eviction counts are read
MIN_SERVER_BYTES = 64 << 20  # a server limit smaller than this would starve Redis itself

_PUT = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('SADD', KEYS[2], KEYS[1])
return 1
"""

_DROP = """
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
local keys = redis.call('SMEMBERS', KEYS[1])
local n = 0
for i = 1, #keys, 1000 do
  n = n + redis.call('DEL', unpack(keys, i, math.min(i + 999, #keys)))
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return n
"""


class RedisTier(Tier):
    name = "redis"

    def __init__(self, *, max_bytes: int, ttl: float, url: str, prefix: str = "ollamamax:cache:",
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(max_bytes=max_bytes, ttl=ttl, clock=clock)
        self.url = url
        self.prefix = prefix
        self.channel = prefix + "invalidate"
        self.client: aioredis.Redis = aioredis.Redis.from_url(url)
        self._put_script = self.client.register_script(_PUT)
        self._drop_script = self.client.register_script(_DROP)
        self.on_invalidate: Callable[[str], None] | None = None  # another gateway dropped one
        self._bytes = 0
        self._evictions_at_start: int | None = None
        self._evictions = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.subscribed = asyncio.Event()  # invalidations from other gateways now arrive
        self.errors = 0  # commands that failed (the tier then answers "miss")

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def evictions(self) -> int:
        return self._evictions

    async def start(self) -> None:
        await self._bound_memory()
        await self._read_stats()
        self._tasks = [asyncio.create_task(self._follow_invalidations(), name="cache-redis-sub"),
                       asyncio.create_task(self._stats_loop(), name="cache-redis-stats")]

    async def close(self) -> None:
        self._closed = True
        pending = set(self._tasks)
        for _ in range(20):  # redis-py swallows a cancellation that lands while it connects
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        self._tasks = []
        await self.client.aclose()

    async def _get(self, key: bytes) -> bytes | None:
        try:
            value = await self.client.get(self._entry(key))
        except RedisError as exc:
            return self._failed("get", exc)
        return value if isinstance(value, bytes) else None

    async def _put(self, key: bytes, value: bytes, digest: str) -> bool:
        ttl_ms = int(self.ttl * 1000)
        try:
            stored = await self._put_script(
                keys=[self._entry(key), self.prefix + "d:" + digest, self.prefix + "dead:" + digest],
                args=[value, ttl_ms])
        except RedisError as exc:
            return bool(self._failed("put", exc))
        return bool(stored)

    async def _drop_digest(self, digest: str) -> int:
        try:
            return int(await self._drop_script(
                keys=[self.prefix + "d:" + digest, self.prefix + "dead:" + digest],
                args=[digest, TOMBSTONE_S, self.channel]))
        except RedisError as exc:
            self._failed("invalidate", exc)
            return 0

    # -- internals -------------------------------------------------------------------------

    def _entry(self, key: bytes) -> str:
        return self.prefix + "e:" + key.hex()

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.warning("redis cache tier: %s failed (%s); treated as a miss (%d failures so far)",
                        what, exc, self.errors)

    async def _bound_memory(self) -> None:
        if self.max_bytes < MIN_SERVER_BYTES:
            return  # below what Redis needs for itself: a bound for entries only
        try:
            current = await self.client.config_get("maxmemory")
            if int(current.get("maxmemory", 0) or 0) == 0:
                await self.client.config_set("maxmemory", self.max_bytes)
                await self.client.config_set("maxmemory-policy", "allkeys-lfu")
        except RedisError as exc:
            log.info("redis cache tier: the server's memory limit is left as it is (%s)", exc)

    async def _read_stats(self) -> None:
        try:
            memory: dict[str, Any] = await self.client.info("memory")
            stats: dict[str, Any] = await self.client.info("stats")
        except RedisError as exc:
            self._failed("INFO", exc)
            return
        self._bytes = int(memory.get("used_memory", 0))
        evicted = int(stats.get("evicted_keys", 0))
        if self._evictions_at_start is None:
            self._evictions_at_start = evicted
        self._evictions = max(0, evicted - self._evictions_at_start)

    async def _stats_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(STATS_S)
            await self._read_stats()

    async def _follow_invalidations(self) -> None:
        """Invalidations published by any gateway (this one too: dropping twice is harmless)."""
        while not self._closed:
            try:
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message" and self.on_invalidate is not None:
                            data = message.get("data")
                            self.on_invalidate(data.decode() if isinstance(data, bytes) else str(data))
            except RedisError as exc:
                self._failed("subscribe", exc)
                await asyncio.sleep(1.0)
