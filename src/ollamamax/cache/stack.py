"""Tiers stacked fastest first: read down, promote up, write behind, invalidate everywhere.

A lookup asks each tier in order and stops at the first hit; the answer is then written to
every tier above the one that had it (promotion), so the next lookup stops earlier. A new
answer goes into the memory tier at once and into the slower tiers from a background task
(write-behind), so recording an answer costs the request nothing it would wait for. An
invalidation drops a digest from every tier; one announced by another gateway (through the
Redis tier) drops it from this gateway's local tiers.

The tiers below memory store an entry as ``<digest> NUL <answer>``, so an answer promoted
from them is indexed under its digest again (and can be invalidated where it lands).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from ollamamax.cache.memory import MemoryTier
from ollamamax.cache.tier import Tier

log = logging.getLogger(__name__)

WRITE_QUEUE = 4096  # pending background writes; beyond it writes are skipped (counted)

Counter = Callable[[tuple[str, str]], None]


class CacheStack:
    def __init__(self, tiers: Sequence[Tier], count: Counter | None = None) -> None:
        if not tiers:
            raise ValueError("a cache needs at least one tier")
        self.tiers = list(tiers)
        self._memory = self.tiers[0] if isinstance(self.tiers[0], MemoryTier) else None
        self._count = count or (lambda key: None)
        self._queue: asyncio.Queue[Callable[[], Awaitable[object]]] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.skipped_writes = 0
        self.invalidations = 0
        for tier in self.tiers:
            if hasattr(tier, "on_invalidate"):
                tier.on_invalidate = self.dropped_elsewhere

    async def start(self) -> None:
        for tier in self.tiers:
            await tier.start()

    async def close(self) -> None:
        """Finish the writes queued (briefly), then close every tier."""
        if self._writer is not None and self._queue is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._queue.join()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        for tier in self.tiers:
            await tier.close()

    async def lookup(self, key: bytes) -> tuple[bytes, str] | None:
        """The answer and the name of the tier that had it, or None."""
        start = 0
        memory = self._memory
        if memory is not None:
            value = memory.lookup(key)
            if value is not None:
                memory.hits += 1
                self._count(("memory", "hit"))
                return value, "memory"
            memory.misses += 1
            self._count(("memory", "miss"))
            start = 1
        for level in range(start, len(self.tiers)):
            tier = self.tiers[level]
            entry = await tier.get(key)
            if entry is not None:
                digest, _, value = entry.partition(b"\0")
                self._count((tier.name, "hit"))
                self._promote(key, entry, value, digest.decode(), level)
                return value, tier.name
            self._count((tier.name, "miss"))
        return None

    def record(self, key: bytes, value: bytes, digest: str) -> None:
        """A fresh answer: into memory now, into the other tiers in the background."""
        start = 0
        if self._memory is not None:
            self._memory.stores += 1
            self._memory.store(key, value, digest)
            start = 1
        if start < len(self.tiers):
            entry = digest.encode() + b"\0" + value
            for tier in self.tiers[start:]:
                enqueue = getattr(tier, "enqueue", None)  # tiers that batch their own writes
                if enqueue is not None:
                    tier.stores += 1
                    enqueue(key, entry, digest)
                else:
                    self._behind(_put(tier, key, entry, digest))

    def invalidate(self, digest: str) -> None:
        """A model's digest was replaced: drop its entries in every tier (the Redis tier
        tells the other gateways)."""
        self.invalidations += 1
        self._drop(digest, self.tiers)

    def dropped_elsewhere(self, digest: str) -> None:
        """Another gateway invalidated `digest` (announced through the shared tier)."""
        self._drop(digest, [t for t in self.tiers if not hasattr(t, "on_invalidate")])

    async def flush(self) -> None:
        """Wait until the background writes queued so far are done (tests, benchmarks)."""
        if self._queue is not None:
            await self._queue.join()
        for tier in self.tiers:
            await tier.flush()

    # -- internals -------------------------------------------------------------------------

    def _drop(self, digest: str, tiers: Sequence[Tier]) -> None:
        for tier in tiers:
            if tier is self._memory:
                dropped = self._memory.drop_now(digest)
                if dropped:
                    log.info("cache: dropped %d memory entries of digest %s", dropped, digest[:19])
            else:
                self._behind(_drop(tier, digest))

    def _promote(self, key: bytes, entry: bytes, value: bytes, digest: str, level: int) -> None:
        if not digest:
            return
        for tier in self.tiers[:level]:
            if tier is self._memory:
                self._memory.store(key, value, digest)
            else:
                self._behind(_put(tier, key, entry, digest))

    def _behind(self, job: Callable[[], Awaitable[object]]) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue(WRITE_QUEUE)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop(),
                                                                  name="cache-writer")
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.skipped_writes += 1

    async def _write_loop(self) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            try:
                await job()
            except Exception:
                log.exception("unexpected error in a cache write")
            finally:
                self._queue.task_done()



def _put(tier: Tier, key: bytes, value: bytes, digest: str) -> Callable[[], Awaitable[object]]:
    return lambda: tier.put(key, value, digest)


def _drop(tier: Tier, digest: str) -> Callable[[], Awaitable[object]]:
    return lambda: tier.drop_digest(digest)
