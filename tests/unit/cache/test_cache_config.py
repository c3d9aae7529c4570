"""`[cache]`: tiers by name, checked at load; the bench's workload repeats as it says."""

from __future__ import annotations

import pytest

from ollamamax.bench.cache import workload
from ollamamax.cache.memory import MemoryTier
from ollamamax.cache.responses import open_tiers
from ollamamax.config import CacheConfig, load
from ollamamax.errors import ConfigError


def test_the_default_is_the_memory_tier_of_the_catalogue_size():
    conf = load(env={}).cache
    tiers = open_tiers(conf)
    assert [t.name for t in tiers] == ["memory"]
    assert isinstance(tiers[0], MemoryTier) and tiers[0].max_bytes == 100 << 20


@pytest.mark.parametrize(("env", "message"), [
    ({"OLLAMAMAX_CACHE_TIERS": "memory,ramdisk"}, "valid tiers: memory, disk, redis"),
    ({"OLLAMAMAX_CACHE_TIERS": "memory,memory"}, "names a tier twice"),
    ({"OLLAMAMAX_CACHE_MEMORY_MAX_BYTES": "0"}, "memory_max_bytes must be > 0"),
    ({"OLLAMAMAX_CACHE_DISK_TTL": "-1"}, "TTLs must be >= 0"),
])
def test_bad_cache_settings_are_refused_saying_why(env, message):
    with pytest.raises(ConfigError, match=message):
        load(env=env)


def test_an_empty_tier_list_turns_the_cache_off():
    assert load(env={"OLLAMAMAX_CACHE_TIERS": ""}).cache.tiers == ()


def test_tiers_stack_in_the_configured_order(tmp_path):
    conf = CacheConfig(tiers=("disk", "memory"), disk_dir=str(tmp_path / "d"))
    assert [t.name for t in open_tiers(conf)] == ["disk", "memory"]


def test_the_bench_workload_repeats_the_share_it_is_asked_to():
    chunks = workload(5000, 0.7, seed=3)
    repeats = len(chunks) - len(set(chunks))
    assert 0.67 < repeats / len(chunks) < 0.73
    assert workload(5000, 0.7, seed=3) == chunks  # the same sequence for both gateways
