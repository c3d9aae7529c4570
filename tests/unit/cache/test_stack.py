"""Tiers stacked: read down, promote up, write behind, invalidate everywhere (and in other
gateways, through the shared tier)."""

from __future__ import annotations

import pytest

from ollamamax.cache.disk import DiskTier
from ollamamax.cache.memory import MemoryTier
from ollamamax.cache.redis import RedisTier
from ollamamax.cache.stack import CacheStack


def counter():
    counts: dict[tuple[str, str], int] = {}

    def count(key):
        counts[key] = counts.get(key, 0) + 1

    return counts, count


@pytest.fixture
async def two_tiers(tmp_path):
    counts, count = counter()
    stack = CacheStack([MemoryTier(max_bytes=1 << 20, ttl=0),
                        DiskTier(max_bytes=1 << 20, ttl=0, directory=str(tmp_path / "d"))], count)
    await stack.start()
    yield stack, counts
    await stack.close()


async def test_a_recorded_answer_is_found_in_memory(two_tiers):
    stack, counts = two_tiers
    assert await stack.lookup(b"k") is None
    stack.record(b"k", b"answer", "sha256:aa")
    assert await stack.lookup(b"k") == (b"answer", "memory")
    assert counts == {("memory", "miss"): 1, ("disk", "miss"): 1, ("memory", "hit"): 1}


async def test_a_hit_in_a_lower_tier_is_promoted(two_tiers):
    stack, _ = two_tiers
    stack.record(b"k", b"answer", "sha256:aa")
    await stack.flush()
    memory = stack.tiers[0]
    await memory.drop_digest("sha256:aa")  # as if evicted from memory only
    assert await stack.lookup(b"k") == (b"answer", "disk")
    assert await stack.lookup(b"k") == (b"answer", "memory")  # promoted
    # and indexed under its digest again where it landed
    stack.invalidate("sha256:aa")
    await stack.flush()
    assert await stack.lookup(b"k") is None


async def test_invalidation_drops_a_digest_in_every_tier(two_tiers):
    stack, _ = two_tiers
    stack.record(b"a", b"1", "sha256:aa")
    stack.record(b"b", b"2", "sha256:bb")
    await stack.flush()
    stack.invalidate("sha256:aa")
    await stack.flush()
    for tier in stack.tiers:
        assert await tier.get(b"a") is None
        assert await tier.get(b"b") is not None


@pytest.mark.slow
async def test_an_invalidation_in_one_gateway_empties_the_others_tiers(redis_server, tmp_path):
    """Two gateways share one Redis: the first drops a digest; the second's memory tier and
    the shared tier no longer answer for it."""
    stacks = []
    for _ in range(2):
        stacks.append(CacheStack([MemoryTier(max_bytes=1 << 20, ttl=0),
                                  RedisTier(max_bytes=1 << 20, ttl=0, url=redis_server.url,
                                            prefix="two-gateways:")]))
        await stacks[-1].start()
    first, second = stacks
    try:
        first.record(b"k", b"answer", "sha256:aa")
        await first.flush()
        assert await second.lookup(b"k") == (b"answer", "redis")  # shared, then promoted
        assert await second.lookup(b"k") == (b"answer", "memory")
        await second.tiers[1].subscribed.wait()
        first.invalidate("sha256:aa")
        await first.flush()
        for _ in range(200):  # the announcement arrives on the second's subscription
            if await second.lookup(b"k") is None:
                break
            await second.tiers[1].client.ping()
        assert await second.lookup(b"k") is None
    finally:
        for stack in stacks:
            await stack.close()
