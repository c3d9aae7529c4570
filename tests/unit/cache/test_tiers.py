"""One contract for every cache tier (memory, disk, redis), then what is particular to each."""

from __future__ import annotations

import itertools

import pytest

from ollamamax.cache import TIERS, tier_class
from ollamamax.cache.disk import DiskTier
from ollamamax.cache.memory import MemoryTier
from ollamamax.cache.redis import RedisTier

_prefixes = itertools.count()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# the redis tier runs against a real redis-server: a real process, so marked slow
@pytest.fixture(params=[pytest.param(name, marks=pytest.mark.slow) if name == "redis" else name
                        for name in sorted(TIERS)])
async def make_tier(request, tmp_path):
    made = []

    async def make(max_bytes: int = 1 << 20, ttl: float = 0.0, clock=None):
        kwargs = {"max_bytes": max_bytes, "ttl": ttl}
        if clock is not None:
            kwargs["clock"] = clock
        if request.param == "disk":
            kwargs["directory"] = str(tmp_path / f"disk-{len(made)}")
        if request.param == "redis":
            server = request.getfixturevalue("redis_server")
            kwargs.update(url=server.url, prefix=f"test{next(_prefixes)}:")
        tier = tier_class(request.param)(**kwargs)
        await tier.start()
        made.append(tier)
        return tier

    yield make
    for tier in made:
        await tier.close()


async def test_a_stored_value_comes_back_and_counts_a_hit(make_tier):
    tier = await make_tier()
    assert await tier.get(b"k1") is None
    assert await tier.put(b"k1", b"answer", "sha256:aa")
    assert await tier.get(b"k1") == b"answer"
    assert (tier.hits, tier.misses) == (1, 1)


async def test_drop_digest_removes_that_models_entries_only(make_tier):
    tier = await make_tier()
    await tier.put(b"a1", b"1", "sha256:aa")
    await tier.put(b"a2", b"2", "sha256:aa")
    await tier.put(b"b1", b"3", "sha256:bb")
    assert await tier.drop_digest("sha256:aa") == 2
    assert await tier.get(b"a1") is None and await tier.get(b"a2") is None
    assert await tier.get(b"b1") == b"3"
    assert tier.dropped == 2


async def test_nothing_is_stored_without_a_digest_or_above_the_size(make_tier):
    tier = await make_tier(max_bytes=1000)
    assert not await tier.put(b"k", b"v", "")
    assert not await tier.put(b"k", b"x" * 1001, "sha256:aa")
    assert await tier.get(b"k") is None


def test_an_unknown_tier_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid tiers: memory, disk, redis"):
        tier_class("ramdisk")


# -- particular to each --------------------------------------------------------------------

async def test_memory_entries_expire_after_their_ttl():
    clock = Clock()
    tier = MemoryTier(max_bytes=1 << 20, ttl=10, clock=clock)
    await tier.put(b"k", b"v", "sha256:aa")
    clock.now += 9
    assert await tier.get(b"k") == b"v"
    clock.now += 2
    assert await tier.get(b"k") is None
    assert tier.bytes == 0


async def test_memory_bytes_stay_within_the_bound_and_evictions_are_counted():
    tier = MemoryTier(max_bytes=50_000, ttl=0)
    for i in range(100):  # fills it; the later ones are refused (not evictions)
        await tier.put(b"old-%d" % i, b"x" * 1000, "sha256:aa")
    assert tier.bytes <= 50_000 and tier.evictions == 0
    for i in range(20):  # asked for three times each: more popular than the incumbents
        for _ in range(3):
            assert await tier.get(b"new-%d" % i) is None
        await tier.put(b"new-%d" % i, b"x" * 1000, "sha256:aa")
    assert tier.bytes <= 50_000
    assert tier.evictions > 0
    assert await tier.get(b"new-0") == b"x" * 1000


async def test_disk_entries_outlive_the_process_that_wrote_them(tmp_path):
    first = DiskTier(max_bytes=1 << 20, ttl=0, directory=str(tmp_path / "d"))
    await first.put(b"k", b"v", "sha256:aa")
    await first.close()
    second = DiskTier(max_bytes=1 << 20, ttl=0, directory=str(tmp_path / "d"))
    assert await second.get(b"k") == b"v"
    assert await second.drop_digest("sha256:aa") == 1
    await second.close()


@pytest.mark.slow
async def test_redis_refuses_a_put_for_an_invalidated_digest(redis_server):
    """A gateway that has not seen the model change yet cannot write the new model's answer
    under the old digest for the others to read."""
    tier = RedisTier(max_bytes=1 << 20, ttl=0, url=redis_server.url, prefix="tomb:")
    await tier.start()
    try:
        await tier.put(b"k", b"old", "sha256:aa")
        await tier.drop_digest("sha256:aa")
        assert not await tier.put(b"k", b"new", "sha256:aa")
        assert await tier.get(b"k") is None
        assert await tier.put(b"k", b"new", "sha256:bb")
    finally:
        await tier.close()


@pytest.mark.slow
async def test_redis_tells_every_subscriber_about_an_invalidation(redis_server):
    tiers = [RedisTier(max_bytes=1 << 20, ttl=0, url=redis_server.url, prefix="pub:")
             for _ in range(2)]
    heard: list[str] = []
    tiers[1].on_invalidate = heard.append
    for tier in tiers:
        await tier.start()
    try:
        await tiers[1].subscribed.wait()
        await tiers[0].drop_digest("sha256:cc")
        for _ in range(200):
            if heard:
                break
            await tiers[1].client.ping()  # a round trip lets the message arrive
        assert heard == ["sha256:cc"]
    finally:
        for tier in tiers:
            await tier.close()


@pytest.mark.slow
async def test_redis_answers_miss_when_the_server_is_gone(tmp_path):
    from ollamamax.testing.redis import LocalRedis, missing_reason

    if missing_reason():
        pytest.skip(missing_reason())
    with LocalRedis(tmp_path / "gone") as server:
        tier = RedisTier(max_bytes=1 << 20, ttl=0, url=server.url)
    try:
        assert await tier.get(b"k") is None
        assert not await tier.put(b"k", b"v", "sha256:aa")
        assert tier.errors == 2
    finally:
        await tier.close()
