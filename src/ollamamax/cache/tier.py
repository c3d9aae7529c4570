"""What every cache tier is: a byte store keyed by bytes, with entries grouped by model digest.

Following the project's rule (STYLE.md 4) the public methods count and check, the private
ones do the work: `get` counts hits and misses, `put` refuses what cannot be stored, and
`drop_digest` drops every entry recorded for a model digest (invalidation when a model
changes). Values are opaque bytes (a recorded answer); keys are the digests `cache.keys`
computes, so a tier never sees a request.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable


class Tier(abc.ABC):
    name = ""

    def __init__(self, *, max_bytes: int, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl  # seconds an entry lives; 0: until evicted or invalidated
        self.clock = clock
        self.hits = 0
        self.misses = 0
        self.stores = 0
        self.dropped = 0  # entries removed by invalidation

    async def get(self, key: bytes) -> bytes | None:
        value = await self._get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    async def put(self, key: bytes, value: bytes, digest: str) -> bool:
        """Store `value` under `key`, recorded for `digest`; False if the tier refused it."""
        if not digest or len(value) > self.max_bytes:
            return False
        self.stores += 1
        return await self._put(key, value, digest)

    async def drop_digest(self, digest: str) -> int:
        """Drop every entry recorded for `digest`; how many there were."""
        if not digest:
            return 0
        count = await self._drop_digest(digest)
        self.dropped += count
        return count

    async def start(self) -> None:
        """Connect (tiers that need to); called once the event loop runs."""
        return None

    async def flush(self) -> None:
        """Wait until writes the tier queued itself are done (tiers that batch them)."""
        return None

    async def close(self) -> None:
        """Release what the tier holds open (files, connections)."""
        return None

    @property
    @abc.abstractmethod
    def bytes(self) -> int:
        """Bytes held now (as last known, for tiers that must ask a server)."""

    @property
    @abc.abstractmethod
    def evictions(self) -> int:
        """Entries the tier removed to stay within its bounds (not invalidations)."""

    @abc.abstractmethod
    async def _get(self, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    async def _put(self, key: bytes, value: bytes, digest: str) -> bool: ...

    @abc.abstractmethod
    async def _drop_digest(self, digest: str) -> int: ...
