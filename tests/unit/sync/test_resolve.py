"""Versions and conflicts: the hybrid logical clock's rules, resolution by policy (the same
answer whatever the order of the records or the planner), and merkle divergence."""

from __future__ import annotations

import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollamamax.sync.hlc import HLC, HybridClock, receive, send
from ollamamax.sync.resolve import (
    VersionRecord,
    divergent_models,
    manifest_digest,
    missing_bytes,
    resolve,
    summarize,
)


def manifest(seed: int, size: int = 100) -> str:
    blob = f"sha256:{seed:064x}"
    return msgspec.json.encode({"schemaVersion": 2, "config": {"digest": f"sha256:{seed + 1:064x}",
                                                               "size": 10},
                                "layers": [{"digest": blob, "size": size}]}).decode()


def record(seed: int, hlc: tuple[int, int, str], origin: str = "") -> VersionRecord:
    text = manifest(seed)
    return VersionRecord(digest=manifest_digest(text), manifest=text, origin=origin or hlc[2],
                         hlc=hlc)


# -- hybrid logical clock --------------------------------------------------------------------


def test_send_follows_the_wall_clock_and_counts_when_it_stands_still() -> None:
    t1 = send(HLC(0, 0, ""), 1000, "a")
    assert t1 == HLC(1000, 0, "a")
    assert send(t1, 1000, "a") == HLC(1000, 1, "a")
    assert send(t1, 900, "a") == HLC(1000, 1, "a")  # the wall clock went back: still later
    assert send(t1, 2000, "a") == HLC(2000, 0, "a")


def test_receive_orders_after_both_even_when_the_wall_clock_lags() -> None:
    mine, theirs = HLC(1000, 3, "a"), HLC(5000, 7, "b")
    after = receive(mine, theirs, 1200, "a")
    assert after > mine and after > theirs and after == HLC(5000, 8, "a")
    assert receive(HLC(5000, 9, "a"), theirs, 100, "a") == HLC(5000, 10, "a")
    assert receive(mine, HLC(1000, 5, "b"), 1000, "a") == HLC(1000, 6, "a")
    assert receive(mine, theirs, 9000, "a") == HLC(9000, 0, "a")


@settings(max_examples=50)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 50), st.integers(0, 50),
                          st.integers(0, 3)), max_size=60))
def test_a_clock_never_goes_back_and_a_local_event_follows_what_it_saw(steps) -> None:
    walls = iter([w for _, w, _, _ in steps] + [0])
    clock = HybridClock("a", wall=lambda: next(walls))
    last = clock.last
    for is_receive, _, remote_wall, remote_logical in steps:
        if is_receive:
            remote = HLC(remote_wall, remote_logical, "b")
            t = clock.observe(remote)
            assert t >= remote
        else:
            t = clock.now()
            assert t > last
        assert t >= last
        last = t


def test_a_restarted_clock_continues_after_its_persisted_value() -> None:
    clock = HybridClock("a", HLC(10_000, 4, "a"), wall=lambda: 5_000)  # the wall went back
    assert clock.now() == HLC(10_000, 5, "a")
    assert HLC.from_json(clock.now().to_json()) == HLC(10_000, 6, "a")
    with pytest.raises(ValueError):
        HLC.from_json([1, -1, "a"])


# -- resolution ------------------------------------------------------------------------------


def test_newest_wins_and_equal_times_go_to_the_greatest_digest() -> None:
    old, new = record(1, (1000, 0, "a")), record(2, (2000, 0, "b"))
    res = resolve("m:1", {"a": old, "b": new, "c": old})
    assert res.digest == new.digest and res.conflict
    assert res.current == ("b",) and res.stale == ("a", "c")
    x, y = record(3, (3000, 0, "n")), record(4, (3000, 0, "n"))
    assert resolve("m:1", {"a": x, "b": y}).digest == max(x.digest, y.digest)


def test_majority_counts_holders_and_a_tie_goes_to_the_newest() -> None:
    old, new = record(1, (1000, 0, "a")), record(2, (2000, 0, "b"))
    assert resolve("m", {"a": old, "c": old, "b": new}, "majority").digest == old.digest
    assert resolve("m", {"a": old, "b": new}, "majority").digest == new.digest


def test_a_pinned_digest_wins_even_when_older_and_a_missing_one_wins_nothing() -> None:
    old, new = record(1, (1000, 0, "a")), record(2, (2000, 0, "b"))
    assert resolve("m", {"a": old, "b": new}, "pinned", old.digest).digest == old.digest
    res = resolve("m", {"a": old, "b": new}, "pinned", "sha256:" + "e" * 64)
    assert res.winner is None and "no node" in res.note
    assert resolve("m", {"a": old, "b": new}, "pinned", "").digest == new.digest  # newest
    with pytest.raises(ValueError, match="unknown sync policy"):
        resolve("m", {"a": old}, "oldest")


def test_a_record_whose_manifest_does_not_match_its_digest_is_ignored() -> None:
    good = record(1, (1000, 0, "a"))
    forged = msgspec.structs.replace(record(2, (9000, 0, "b")), digest=good.digest[:-1] + "0")
    res = resolve("m", {"a": good, "b": forged})
    assert res.digest == good.digest and res.holders == {good.digest: ("a",)}
    assert "ignored 1" in res.note


def test_a_copy_keeps_the_time_of_the_version_it_copies() -> None:
    """A replica made later must not beat a newer version elsewhere: it carries the old HLC."""
    original = record(1, (1000, 0, "a"))
    newer = record(2, (2000, 0, "c"))
    replica = original  # sync copies the record, time and origin included
    assert resolve("m", {"a": original, "b": replica, "c": newer}, "newest").digest == newer.digest


records_st = st.dictionaries(
    st.sampled_from([f"node-{i}" for i in range(6)]),
    st.builds(lambda seed, wall, logical, who: record(seed, (wall, logical, who)),
              st.integers(0, 4), st.integers(0, 3), st.integers(0, 2),
              st.sampled_from(["node-0", "node-1", "node-2"])),
    min_size=1)


@settings(max_examples=60)
@given(records_st, st.sampled_from(["newest", "majority", "pinned"]), st.randoms())
def test_every_planner_reaches_the_same_answer_whatever_the_order(records, policy, rnd) -> None:
    pinned = sorted(r.digest for r in records.values())[0] if policy == "pinned" else ""
    answers = set()
    for _ in range(4):  # four planners, each reading the records in its own order
        items = list(records.items())
        rnd.shuffle(items)
        res = resolve("m:1", dict(items), policy, pinned)
        answers.add((res.digest, res.winner, tuple(sorted(res.holders.items()))))
    assert len(answers) == 1
    (digest, winner, holders), = answers
    assert winner is not None and digest in dict(holders)
    if policy == "newest":
        assert winner.time == max(r.time for r in records.values())


def test_two_nodes_with_diverging_tags_get_one_resolution_on_every_planner() -> None:
    a = record(1, (1000, 0, "node-a"))
    b = record(2, (1000, 1, "node-b"))  # b re-pulled after seeing a
    answers = {resolve("llama3:8b", dict(order)).digest
               for order in ([("node-a", a), ("node-b", b)], [("node-b", b), ("node-a", a)])}
    assert answers == {b.digest}


# -- divergence ------------------------------------------------------------------------------


def test_equal_nodes_cost_one_root_comparison_and_differences_are_found() -> None:
    same = {"a:1": "sha256:" + "1" * 64, "b:1": "sha256:" + "2" * 64}
    s1, s2 = summarize(same, ["sha256:" + "9" * 64]), summarize(dict(same), ["sha256:" + "9" * 64])
    assert s1.root == s2.root and divergent_models({"x": s1, "y": s2}) == set()
    other = dict(same, **{"b:1": "sha256:" + "3" * 64, "c:1": "sha256:" + "4" * 64})
    s3 = summarize(other, [])
    assert divergent_models({"x": s1, "y": s3}) == {"b:1", "c:1"}
    assert summarize(same, []).root != s1.root  # the blob set counts too


@settings(max_examples=40)
@given(st.lists(st.dictionaries(st.sampled_from([f"m{i}:1" for i in range(20)]),
                                st.sampled_from(["sha256:" + c * 64 for c in "abc"])),
                min_size=1, max_size=4))
def test_divergence_matches_a_plain_comparison(maps) -> None:
    summaries = {f"n{i}": summarize(m, []) for i, m in enumerate(maps)}
    expected = {model for m in maps for model in m if len({x.get(model) for x in maps}) > 1}
    assert divergent_models(summaries) == expected


def test_missing_bytes_never_counts_a_blob_the_node_has() -> None:
    rng = random.Random(1)
    held = [f"sha256:{rng.getrandbits(256):064x}" for _ in range(50)]
    summary = summarize({}, held)
    assert missing_bytes(summary, [(d, 10) for d in held]) == 0
    assert missing_bytes(summary, [("sha256:" + "f" * 64, 7)]) in (0, 7)
    assert missing_bytes(None, [("sha256:" + "f" * 64, 7)]) == 7
