"""The local-disk tier (L2): `diskcache` (SQLite index, values in the database or in files),
bounded in bytes by diskcache's own culling, entries tagged with their model digest so one
``evict(tag)`` invalidates a model.

Reads are made on the event loop (a small SQLite read, about ten microseconds: cheaper than
a hop to a thread); writes and invalidations go to a thread, off the request path. Writes are
batched: those that queue within `BATCH_DELAY_S`, or while a batch is written, go in one SQLite
transaction (a lone ``set`` costs about 200 us of CPU; in a transaction of many, a
fraction); a queued write is already read back. The eviction policy is diskcache's
``least-recently-stored``: it never writes on a read, and the memory tier above already
keeps what is used often.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import diskcache

from ollamamax.cache.tier import Tier

BATCH_DELAY_S = 0.05  # a write waits this long for others to share its transaction


class DiskTier(Tier):
    name = "disk"

    def __init__(self, *, max_bytes: int, ttl: float, directory: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(max_bytes=max_bytes, ttl=ttl, clock=clock)
        self.directory = os.path.expanduser(directory)
        self._cache = diskcache.Cache(self.directory, size_limit=max_bytes, tag_index=True,
                                      eviction_policy="least-recently-stored")
        self._initial = len(self._cache)  # kept from an earlier run: not this run's stores
        self._batch: dict[bytes, tuple[bytes, str]] = {}  # queued for the next transaction
        self._writing: dict[bytes, tuple[bytes, str]] = {}  # in the transaction under way
        self._writer: asyncio.Task[None] | None = None

    @property
    def bytes(self) -> int:
        return int(self._cache.volume())

    @property
    def evictions(self) -> int:
        """Entries this run stored that are gone for another reason than invalidation
        (culled to stay within the size, or expired); a count diskcache does not keep itself."""
        return max(0, self.stores - self.dropped - (len(self._cache) - self._initial))

    async def _get(self, key: bytes) -> bytes | None:
        queued = self._batch.get(key) or self._writing.get(key)
        if queued is not None:
            return queued[0]
        value = self._cache.get(key)
        return value if isinstance(value, bytes) else None

    async def _put(self, key: bytes, value: bytes, digest: str) -> bool:
        return self.enqueue(key, value, digest)

    def enqueue(self, key: bytes, value: bytes, digest: str) -> bool:
        """`put` without a coroutine, for the stack's write path: queued for the next batch
        (True once queued; the batch writes it)."""
        if not digest or len(value) > self.max_bytes:
            return False
        self._batch[key] = (value, digest)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_batches(),
                                                                  name="cache-disk-writer")
        return True

    async def _drop_digest(self, digest: str) -> int:
        await self.flush()  # entries of `digest` still queued are dropped too
        return int(await asyncio.to_thread(self._cache.evict, digest))

    async def flush(self) -> None:
        """Wait until every queued write is on disk."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def close(self) -> None:
        await self.flush()
        self._cache.close()

    async def _write_batches(self) -> None:
        await asyncio.sleep(BATCH_DELAY_S)  # gather a batch: one transaction for many writes
        while self._batch:
            self._writing, self._batch = self._batch, {}
            try:
                await asyncio.to_thread(self._write, self._writing)
            finally:
                self._writing = {}

    def _write(self, batch: dict[bytes, tuple[bytes, str]]) -> None:
        expire = self.ttl or None
        with self._cache.transact():
            for key, (value, digest) in batch.items():
                self._cache.set(key, value, expire=expire, tag=digest)
