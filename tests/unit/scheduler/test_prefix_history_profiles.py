"""What the view learns from traffic: the prefix index, the task history, the profiles."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollamamax.scheduler.history import TaskHistory
from ollamamax.scheduler.prefix import BLOCK_CHARS, PrefixIndex, text_blocks
from ollamamax.scheduler.profiles import ALPHA, WINDOW, PerformanceProfiles

# -- prompt blocks -------------------------------------------------------------------------


def test_text_blocks_are_full_chained_blocks():
    text = "x" * BLOCK_CHARS * 3 + "tail"
    assert len(text_blocks(text)) == 3
    assert text_blocks("short") == ()
    a = text_blocks("A" * BLOCK_CHARS + "B" * BLOCK_CHARS + "C" * BLOCK_CHARS)
    b = text_blocks("A" * BLOCK_CHARS + "B" * BLOCK_CHARS + "D" * BLOCK_CHARS)
    c = text_blocks("Z" * BLOCK_CHARS + "B" * BLOCK_CHARS + "C" * BLOCK_CHARS)
    assert a[:2] == b[:2] and a[2] != b[2]
    assert a[1] != c[1], "a block's id depends on every block before it"
    assert len(set(text_blocks("x" * BLOCK_CHARS * 5))) == 5


# -- prefix index --------------------------------------------------------------------------

P = (11, 12, 13, 14, 15, 16)


def test_matches_counts_the_leading_blocks_each_node_holds():
    index = PrefixIndex()
    index.record(0, P)
    index.record(1, P[:2])
    index.record(2, (99, *P[1:]))  # holds later blocks but not the first: no match
    assert index.matches(P) == {0: 6, 1: 2}
    assert index.matches(P[:4]) == {0: 4, 1: 2}
    assert index.matches(P, limit=3) == {0: 3, 1: 2}
    assert index.matches(()) == {} and index.matches((42,)) == {}
    assert index.longest(P) == (0, 6)
    assert index.longest((42,)) == (-1, 0)


def test_longest_breaks_ties_by_lowest_node():
    index = PrefixIndex()
    for node in (3, 1, 2):
        index.record(node, P)
    assert index.longest(P) == (1, 6)


def test_a_long_prompt_keeps_its_leading_blocks():
    index = PrefixIndex(capacity_per_node=4)
    index.record(0, P)
    assert index.size(0) == 4
    assert index.matches(P) == {0: 4}


def test_eviction_drops_old_prompt_tails_before_their_beginnings():
    index = PrefixIndex(capacity_per_node=6)
    a, b = (1, 2, 3, 4), (5, 6, 7, 8)
    index.record(0, a)
    index.record(0, b)
    assert index.size(0) == 6
    assert index.matches(a) == {0: 2} and index.matches(b) == {0: 4}


def test_sending_a_prompt_again_refreshes_its_blocks():
    index = PrefixIndex(capacity_per_node=6)
    a, b, c = (1, 2, 3), (4, 5, 6), (7, 8, 9)
    index.record(0, a)
    index.record(0, b)
    index.record(0, a)  # a is now the most recent: b goes first
    index.record(0, c)
    assert index.matches(a) == {0: 3} and index.matches(b) == {} and index.matches(c) == {0: 3}


def test_forget_drops_one_node_only():
    index = PrefixIndex()
    index.record(0, P)
    index.record(1, P)
    index.forget(0)
    index.forget(7)  # unknown: nothing happens
    assert index.size(0) == 0 and index.size(1) == 6
    assert index.matches(P) == {1: 6}
    index.forget(1)
    assert index.matches(P) == {} and index._holders == {}


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        PrefixIndex(0)


def _chain(path: tuple[int, ...]) -> tuple[int, ...]:
    """Chained ids for a path in a small tree of prompts, as text_blocks would make them."""
    out, h = [], 17
    for part in path:
        h = hash((h, part)) & (2**62 - 1)
        out.append(h)
    return tuple(out)


class ModelIndex:
    """A slow, obvious model of PrefixIndex: per node an LRU list, leading-run matching."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lru: dict[int, OrderedDict[int, None]] = {}

    def record(self, node: int, blocks: tuple[int, ...]) -> None:
        mine = self.lru.setdefault(node, OrderedDict())
        for block in reversed(blocks):
            mine.pop(block, None)
            mine[block] = None
        while len(mine) > self.capacity:
            mine.popitem(last=False)

    def matches(self, blocks: tuple[int, ...]) -> dict[int, int]:
        out = {}
        for node, mine in self.lru.items():
            k = 0
            while k < len(blocks) and blocks[k] in mine:
                k += 1
            if k:
                out[node] = k
        return out


prompts = st.lists(st.integers(0, 2), min_size=1, max_size=24).map(tuple)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 30),
       sends=st.lists(st.tuples(st.integers(0, 3), prompts), max_size=30),
       probes=st.lists(prompts, min_size=1, max_size=5))
def test_matches_agree_with_a_plain_lru_model(capacity, sends, probes):
    index, model = PrefixIndex(capacity), ModelIndex(capacity)
    for node, path in sends:
        index.record(node, _chain(path))
        model.record(node, _chain(path))
    for node in range(4):
        assert index.size(node) == len(model.lru.get(node, ()))
    for path in probes:
        assert index.matches(_chain(path)) == model.matches(_chain(path))


# -- task history --------------------------------------------------------------------------


def test_history_ring_wraps_around_keeping_the_newest():
    history = TaskHistory(capacity=4)
    for k in range(6):
        history.append(time=float(k), node=k, model=0, ttft=k / 10)
    assert (len(history), history.total, history.next) == (4, 6, 2)
    assert sorted(history.select("node").tolist()) == [2, 3, 4, 5]
    assert history.percentiles("ttft", (0, 100)) == {0: pytest.approx(0.2), 100: 0.5}


def test_history_percentiles_with_filters():
    history = TaskHistory(capacity=64)
    for k in range(20):
        history.append(time=float(k), node=k % 2, model=k % 3, duration=float(k),
                       outcome="error" if k == 19 else "ok")
    p = history.percentiles("duration", (50,), node=0)
    assert p == {50: float(np.percentile(np.arange(0, 19, 2), 50))}
    assert history.percentiles("duration", (100,), model=2, since=10.0) == {100: 17.0}
    assert history.percentiles("duration", (100,)) == {100: 18.0}  # errors left out
    assert history.percentiles("duration", (100,), outcome=None) == {100: 19.0}
    assert history.percentiles("duration", (100,), outcome="error") == {100: 19.0}
    assert history.percentiles("duration", node=5) is None
    assert history.select("duration", node=1, model=1, since=5.0).tolist() == [7.0, 13.0]


def test_history_rejects_a_bad_capacity_and_unknown_outcomes():
    with pytest.raises(ValueError):
        TaskHistory(0)
    with pytest.raises(KeyError):
        TaskHistory(2).append(time=0.0, node=0, model=0, outcome="exploded")


# -- performance profiles ------------------------------------------------------------------


def test_profiles_average_with_an_ewma():
    profiles = PerformanceProfiles()
    p = profiles.record(0, 0, ok=True, ttft=1.0, prompt_tokens=100, prefill_s=0.5,
                        output_tokens=11, decode_s=1.0)
    assert (p.ttft, p.prefill_tps, p.decode_tps, p.error_rate) == (1.0, 200.0, 10.0, 0.0)
    p = profiles.record(0, 0, ok=True, ttft=2.0, prompt_tokens=100, prefill_s=0.25,
                        output_tokens=21, decode_s=1.0)
    assert p.ttft == pytest.approx(1.0 + ALPHA * (2.0 - 1.0))
    assert p.prefill_tps == pytest.approx(200.0 + ALPHA * (400.0 - 200.0))
    assert p.decode_tps == pytest.approx(10.0 + ALPHA * (20.0 - 10.0))
    p = profiles.record(0, 0, ok=False)
    assert (p.requests, p.errors) == (3, 1)
    assert p.error_rate == pytest.approx(ALPHA)
    assert p.ttft == pytest.approx(1.2), "a failure leaves the speeds alone"


def test_a_first_failure_then_a_success():
    profiles = PerformanceProfiles()
    p = profiles.record(0, 0, ok=False)
    assert p.error_rate == 1.0
    p = profiles.record(0, 0, ok=True, ttft=0.5)
    assert p.ttft == 0.5, "the first success sets the average, whatever failed before"
    assert p.error_rate == pytest.approx(1 - ALPHA)


def test_profiles_keep_the_last_ten_latencies():
    profiles = PerformanceProfiles()
    assert profiles.get(0, 0) is None
    for k in range(WINDOW + 3):
        profiles.record(0, 0, ok=True, latency=float(k))
    p = profiles.get(0, 0)
    assert list(p.latencies) == [float(k) for k in range(3, WINDOW + 3)]
    assert p.mean_latency() == pytest.approx(np.mean(range(3, WINDOW + 3)))
    profiles.record(1, 0, ok=True)
    assert profiles.get(1, 0).mean_latency() is None


def test_profiles_evict_the_least_recently_recorded():
    profiles = PerformanceProfiles(capacity=2)
    profiles.record(0, 0, ok=True)
    profiles.record(1, 0, ok=True)
    profiles.get(0, 0)  # reading does not count as use
    profiles.record(1, 0, ok=True)
    profiles.record(2, 0, ok=True)
    assert profiles.get(0, 0) is None and profiles.get(1, 0) is not None
    assert len(profiles) == 2
