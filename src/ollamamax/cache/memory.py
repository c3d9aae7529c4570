"""The in-process tier (L1): W-TinyLFU bounded in bytes (`cache.tinylfu`), an index by digest
for invalidation, and a TTL checked when an entry is read."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

from ollamamax.cache.tier import Tier
from ollamamax.cache.tinylfu import WTinyLFU

# What an entry costs beyond its value: key, tuples, dict slots (measured order of magnitude).
ENTRY_OVERHEAD = 200


class MemoryTier(Tier):
    name = "memory"

    def __init__(self, *, max_bytes: int, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(max_bytes=max_bytes, ttl=ttl, clock=clock)
        self.policy = WTinyLFU(max_bytes)
        self._digests: dict[str, set[Hashable]] = {}
        self._digest_of: dict[Hashable, str] = {}
        self._evicted = 0

    @property
    def bytes(self) -> int:
        return self.policy.bytes

    @property
    def evictions(self) -> int:
        return self._evicted

    def __len__(self) -> int:
        return len(self.policy)

    async def _get(self, key: bytes) -> bytes | None:
        return self.lookup(key)

    def lookup(self, key: bytes) -> bytes | None:
        """`_get` without a coroutine: the stack calls this first, on every lookup."""
        entry = self.policy.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires and expires <= self.clock():
            self._forget(key)
            self.policy.pop(key)
            return None
        return value  # type: ignore[no-any-return]

    async def _put(self, key: bytes, value: bytes, digest: str) -> bool:
        return self.store(key, value, digest)

    def store(self, key: bytes, value: bytes, digest: str) -> bool:
        expires = self.clock() + self.ttl if self.ttl else 0.0
        self._forget(key)
        self._digest_of[key] = digest
        self._digests.setdefault(digest, set()).add(key)
        left = self.policy.put(key, (value, expires), len(value) + len(key) + ENTRY_OVERHEAD)
        refused = False
        for gone in left:
            self._forget(gone)
            if gone == key:
                refused = True  # not admitted: not an eviction
            else:
                self._evicted += 1
        return not refused

    async def _drop_digest(self, digest: str) -> int:
        return self._drop_keys(digest)

    def drop_now(self, digest: str) -> int:
        """`drop_digest` without a coroutine (counted the same way)."""
        count = self._drop_keys(digest)
        self.dropped += count
        return count

    def _drop_keys(self, digest: str) -> int:
        keys = self._digests.pop(digest, set())
        for key in keys:
            self._digest_of.pop(key, None)
            self.policy.pop(key)
        return len(keys)

    def _forget(self, key: Hashable) -> None:
        digest = self._digest_of.pop(key, None)
        if digest is not None:
            keys = self._digests.get(digest)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._digests[digest]
