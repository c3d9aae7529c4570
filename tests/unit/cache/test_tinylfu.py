"""W-TinyLFU in bytes: the bound always holds, and frequency beats a scan where LRU loses."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from ollamamax.cache.tinylfu import FrequencySketch, WTinyLFU

ops = st.lists(st.tuples(st.sampled_from(["get", "put", "pop"]), st.integers(0, 60),
                         st.integers(0, 900)), max_size=300)


@settings(max_examples=150, deadline=None)
@given(max_bytes=st.integers(1, 5000), script=ops)
def test_never_exceeds_its_byte_bound_and_accounts_exactly(max_bytes, script):
    cache = WTinyLFU(max_bytes)
    model: dict[int, int] = {}  # what the cache may hold: key -> size
    for op, key, size in script:
        if op == "put":
            left = cache.put(key, f"v{key}", size)
            model[key] = size
            for gone in left:
                model.pop(gone, None)
        elif op == "get":
            value = cache.get(key)
            assert value is None or value == f"v{key}"
        else:
            cache.pop(key)
            model.pop(key, None)
        assert cache.bytes <= max_bytes
        held = {k: s for k, s in model.items() if k in cache}
        assert set(held) == {k for k in model if k in cache}
        assert cache.bytes == sum(held.values())
        assert len(cache) == len(held)
        assert all(k in model for k in held)


def test_an_entry_larger_than_the_cache_is_refused():
    cache = WTinyLFU(100)
    assert cache.put("big", b"x", 101) == ["big"]
    assert "big" not in cache and cache.bytes == 0


class LRU:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.items, self.bytes = max_bytes, OrderedDict(), 0

    def get(self, key):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key][0]
        return None

    def put(self, key, value, size):
        self.items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, gone) = self.items.popitem(last=False)
            self.bytes -= gone


def run_scan(cache) -> float:
    """Hot entries used often, then a scan of 10x the cache in one-hit wonders with the hot
    entries asked for again every 150 of them (more than the cache holds): the share of
    those later asks the cache answered."""
    hot = [f"hot-{i}" for i in range(10)]
    for _ in range(20):
        for key in hot:
            if cache.get(key) is None:
                cache.put(key, key, 100)
    asked = answered = 0
    for n in range(1, 1001):  # 1,000 x 100 bytes through a 10,000-byte cache
        key = f"once-{n}"
        if cache.get(key) is None:
            cache.put(key, key, 100)
        if n % 150 == 0:
            for key in hot:
                asked += 1
                if cache.get(key) is not None:
                    answered += 1
                else:
                    cache.put(key, key, 100)
    return answered / asked


def test_frequent_entries_survive_a_scan_that_plain_lru_loses_them_to():
    assert run_scan(WTinyLFU(10_000)) == 1.0
    assert run_scan(LRU(10_000)) == 0.0


def test_a_new_entry_is_served_from_the_window_before_it_is_popular():
    cache = WTinyLFU(10_000)
    cache.put("fresh", "v", 50)
    assert cache.get("fresh") == "v"


def test_the_sketch_counts_past_the_doorkeeper_and_ages():
    sketch = FrequencySketch(width=64, sample=1000)
    assert sketch.estimate("k") == 0
    sketch.increment("k")
    assert sketch.estimate("k") == 1  # the doorkeeper only
    for _ in range(20):
        sketch.increment("k")
    assert sketch.estimate("k") == 16  # 4-bit counters saturate at 15, plus the doorkeeper
    for i in range(1000):
        sketch.increment(f"other-{i}")
    assert sketch.estimate("k") <= 8  # halved, doorkeeper cleared
