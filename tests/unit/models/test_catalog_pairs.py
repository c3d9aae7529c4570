"""Model-side pairs of the optimisation catalogue: each baseline answers as its twin.

Catalogue diffs (linear / indexed / merkle), blob holders (linear / indexed), bandwidth
windows (list / ring) and transfer buffers (fresh / pool).
"""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollamamax.models.bandwidth import ListWindow, RingWindow
from ollamamax.models.buffers import BufferPool, FreshBuffers
from ollamamax.models.holders import IndexedPeers, LinearPeers
from ollamamax.models.versions import (
    IndexedVersions,
    LinearVersions,
    MerkleVersions,
    Version,
    VersionTrie,
)

VARIANTS = (LinearVersions, IndexedVersions, MerkleVersions)
NODES = ["n1", "n2", "n3", "n4"]
MODELS = ["llama3:8b", "llama3:70b", "qwen:7b", "smollm2:135m", "q"]
versions = st.builds(Version, st.integers(0, 3).map(float), st.sampled_from("abc"))
catalogs = st.dictionaries(st.sampled_from(NODES),
                           st.dictionaries(st.sampled_from(MODELS), versions, max_size=5),
                           max_size=4)

# -- catalogue diffs -----------------------------------------------------------------------


@given(catalogs)
def test_every_variant_finds_the_same_differences_conflicts_and_winners(catalog):
    results = [cls(catalog).diff() for cls in VARIANTS]
    assert results[0] == results[1] == results[2]
    for model, d in results[0].items():
        copies = [c[model] for c in catalog.values() if model in c]
        assert d.winner == max(copies)  # newest, then the greatest digest
        assert d.conflict == (len({v.digest for v in copies}) > 1)
        assert sorted(d.current + d.stale + d.missing) == sorted(catalog)


@given(catalogs, st.lists(st.tuples(st.sampled_from(NODES), st.sampled_from(MODELS),
                                    st.none() | versions), max_size=12))
@settings(max_examples=60)
def test_updates_keep_every_variant_equal_to_a_fresh_diff(catalog, changes):
    indexes = [cls(catalog) for cls in VARIANTS]
    current = {node: dict(models) for node, models in catalog.items()}
    for node, model, version in changes:
        for index in indexes:
            index.update(node, model, version)
        held = current.setdefault(node, {})
        if version is None:
            held.pop(model, None)
        else:
            held[model] = version
        fresh = IndexedVersions(current).diff()
        assert [index.diff() for index in indexes] == [fresh] * 3
        assert all(index.version(node, model) == version for index in indexes)


def test_resolution_takes_the_newest_then_the_greatest_digest():
    old, new_a, new_b = Version(1.0, "ff"), Version(2.0, "aa"), Version(2.0, "bb")
    catalog = {"a": {"m": old}, "b": {"m": new_a}, "c": {"m": new_b}, "d": {}}
    for cls in VARIANTS:
        d = cls(catalog).diff()["m"]
        assert d.winner == new_b and d.current == ("c",)
        assert d.stale == ("a", "b") and d.missing == ("d",) and d.conflict


def test_identical_catalogues_differ_nowhere_and_same_digest_is_no_conflict():
    same = {"x": {"m": Version(1.0, "aa")}, "y": {"m": Version(5.0, "aa")}}
    for cls in VARIANTS:
        assert cls(same).diff() == {}
    partial = {"x": {"m": Version(1.0, "aa")}, "y": {}}
    for cls in VARIANTS:
        d = cls(partial).diff()["m"]
        assert not d.conflict and d.missing == ("y",)


def test_the_trie_finds_every_tag_of_a_model():
    trie = VersionTrie()
    for name in ("llama3:8b", "llama3:70b", "llama3.1:8b", "qwen:7b"):
        copies = trie.copies(name, create=True)
        assert copies is not None
        copies["n"] = Version(0.0, "d")
    assert [name for name, _ in trie.with_prefix("llama3:")] == ["llama3:70b", "llama3:8b"]
    assert [name for name, _ in trie.with_prefix("zz")] == []
    assert trie.copies("llama3") is None


def test_merkle_roots_are_equal_exactly_for_equal_catalogues():
    index = MerkleVersions({"a": {"m": Version(1.0, "d1"), "k": Version(1.0, "d2")},
                            "b": {"k": Version(9.0, "d2"), "m": Version(3.0, "d1")},
                            "c": {"m": Version(1.0, "d1")}})
    assert index.root("a") == index.root("b") != index.root("c")


# -- blob holders --------------------------------------------------------------------------

peer_ops = st.lists(st.one_of(
    st.tuples(st.just("set"), st.sampled_from("pqrs"), st.lists(st.sampled_from("ABCDE"))),
    st.tuples(st.just("add"), st.sampled_from("pqrs"), st.sampled_from("ABCDE")),
    st.tuples(st.just("remove"), st.sampled_from("pqrs")),
), max_size=30)


@given(peer_ops)
def test_linear_peer_search_finds_what_the_index_finds(script):
    tables = [LinearPeers(), IndexedPeers()]
    for step in script:
        for t in tables:
            if step[0] == "set":
                t.set_blobs(step[1], step[2])
            elif step[0] == "add":
                t.add(step[1], step[2])
            else:
                t.remove_peer(step[1])
        for blob in "ABCDEZ":
            assert tables[0].holders(blob) == tables[1].holders(blob)


def test_holders_load_a_snapshot():
    for t in (LinearPeers(), IndexedPeers()):
        t.load({"p": ["A", "B"], "q": ["B"]})
        assert t.holders("B") == ("p", "q") and t.holders("A") == ("p",)


# -- bandwidth windows ---------------------------------------------------------------------


@given(st.lists(st.tuples(st.sampled_from("pq"), st.integers(0, 10_000),
                          st.floats(0, 5, allow_nan=False)), max_size=60),
       st.floats(0.5, 20), st.integers(1, 12))
def test_list_and_ring_windows_count_the_same_bytes(transfers, window, buckets):
    windows = [ListWindow(window, buckets), RingWindow(window, buckets)]
    now = 0.0
    for peer, nbytes, gap in transfers:
        now += gap  # time never goes back
        for w in windows:
            w.record(peer, nbytes, now)
        for p in "pqr":
            assert windows[0].bytes(p, now) == windows[1].bytes(p, now)
            assert windows[0].rate(p, now) == windows[1].rate(p, now)
    later = now + 2 * window  # everything has left the window
    assert windows[0].bytes("p", later) == windows[1].bytes("p", later) == 0


def test_a_window_counts_its_slots_only():
    w = RingWindow(window=10.0, buckets=10)
    w.record("p", 100, 0.5)
    w.record("p", 50, 9.5)
    assert w.bytes("p", 9.9) == 150
    assert w.bytes("p", 10.0) == 50  # slot 0 left the window
    assert w.rate("p", 10.0) == 5.0


# -- buffers -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [FreshBuffers, BufferPool])
def test_either_allocator_copies_a_stream_byte_for_byte(cls):
    data = bytes(range(256)) * 1000
    src, dst, pool = io.BytesIO(data), io.BytesIO(), cls(chunk=4096)
    while True:
        buf = pool.acquire()
        n = src.readinto(buf)
        if not n:
            pool.release(buf)
            break
        dst.write(memoryview(buf)[:n])
        pool.release(buf)
    assert dst.getvalue() == data


def test_the_pool_reuses_buffers():
    pool = BufferPool(chunk=16, keep=2)
    a = pool.acquire()
    pool.release(a)
    assert pool.acquire() is a and pool.allocated == 1
    fresh = FreshBuffers(chunk=16)
    assert fresh.acquire() is not fresh.acquire() and fresh.allocated == 2
