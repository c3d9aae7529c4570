from __future__ import annotations

import dataclasses
import hashlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollamamax.errors import ConfigError
from ollamamax.sim import timing
from ollamamax.sim.timing import PROFILES, PrefixCache, Profile

GPU8 = PROFILES["gpu-8b"]


def test_every_profile_is_registered_under_its_name() -> None:
    assert {"instant", "cpu-small", "gpu-8b", "gpu-70b"} <= set(PROFILES)
    for name, profile in PROFILES.items():
        assert timing.get_profile(name) is profile
        assert profile.name == name


def test_unknown_profile_is_a_config_error_listing_the_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        timing.get_profile("tpu-9000")
    message = str(info.value)
    assert "'tpu-9000'" in message
    for name in PROFILES:
        assert name in message


def test_instant_profile_takes_no_time() -> None:
    instant = PROFILES["instant"].sized(8)
    assert timing.ttft(instant, 10_000, concurrent=8) == 0
    assert timing.time_between_tokens(instant, 8) == 0
    assert timing.load_time(instant, 40 << 30) == 0
    assert timing.embed_time(instant, 10_000) == 0


def test_published_figures() -> None:
    assert timing.ttft(GPU8, 1000) == pytest.approx(0.030 + 1000 * 0.00025)
    assert timing.time_between_tokens(GPU8) == pytest.approx(0.012)
    cpu = PROFILES["cpu-small"]
    assert 1 / timing.time_between_tokens(cpu) == pytest.approx(130)
    assert timing.load_time(cpu, 98_000_000) == pytest.approx(0.3, abs=0.01)
    assert 22 <= 1 / timing.time_between_tokens(PROFILES["gpu-70b"]) <= 25


def test_ttft_grows_with_uncached_tokens() -> None:
    times = [timing.ttft(GPU8, n) for n in (0, 1, 100, 8000)]
    assert times == sorted(times)
    assert times[0] == pytest.approx(GPU8.overhead_s)
    assert times[3] - times[2] == pytest.approx(7900 * GPU8.prefill_s_per_token)
    assert timing.ttft(GPU8, -5) == timing.ttft(GPU8, 0)


def test_per_token_time_grows_linearly_to_slowdown_at_max() -> None:
    profile = dataclasses.replace(GPU8, slowdown_at_max=3.0).sized(5)
    base = profile.decode_s_per_token
    assert timing.time_between_tokens(profile, 1) == pytest.approx(base)
    assert timing.time_between_tokens(profile, 3) == pytest.approx(base * 2.0)
    assert timing.time_between_tokens(profile, 5) == pytest.approx(base * 3.0)
    # never beyond the maximum, as llm-d runs at most max-num-seqs at once
    assert timing.time_between_tokens(profile, 50) == pytest.approx(base * 3.0)
    # and prefill slows down by the same factor
    assert timing.ttft(profile, 100, concurrent=5) == pytest.approx(3 * timing.ttft(profile, 100))


def test_one_sequence_engine_never_slows_down() -> None:
    profile = GPU8.sized(1)
    assert timing.time_between_tokens(profile, 4) == profile.decode_s_per_token


def test_sized_fills_only_a_missing_max_sequences() -> None:
    assert GPU8.sized(4).max_sequences == 4
    explicit = dataclasses.replace(GPU8, max_sequences=64)
    assert explicit.sized(4).max_sequences == 64


def test_decode_time_counts_the_gaps_after_the_first_token() -> None:
    assert timing.decode_time(GPU8, 0) == 0
    assert timing.decode_time(GPU8, 1) == 0
    assert timing.decode_time(GPU8, 11) == pytest.approx(10 * 0.012)


def test_load_time_is_base_plus_size_over_rate() -> None:
    assert timing.load_time(GPU8, 0) == pytest.approx(2.0)
    assert timing.load_time(GPU8, 4_000_000_000) == pytest.approx(2.0 + 2.0)


def test_embed_time_is_per_token() -> None:
    assert timing.embed_time(GPU8, 400) == pytest.approx(400 * GPU8.embed_s_per_token)


def test_invalid_profiles_are_refused() -> None:
    with pytest.raises(ValueError, match="times"):
        Profile("bad", overhead_s=-1, prefill_s_per_token=0, decode_s_per_token=0)
    with pytest.raises(ValueError, match="slowdown"):
        Profile("bad", 0, 0, 0, slowdown_at_max=0.5)
    with pytest.raises(ValueError, match="max_sequences"):
        Profile("bad", 0, 0, 0, max_sequences=0)


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2),
                                              ("x" * 400, 100)])
def test_estimate_tokens(text: str, tokens: int) -> None:
    assert timing.estimate_tokens(text) == tokens


def test_prompt_blocks_cover_full_blocks_only() -> None:
    width = timing.BLOCK_TOKENS * timing.CHARS_PER_TOKEN
    assert timing.prompt_blocks("x" * (width - 1)) == []
    assert len(timing.prompt_blocks("x" * width)) == 1
    assert len(timing.prompt_blocks("x" * (3 * width + 5))) == 3
    assert len(timing.prompt_blocks("x" * 64, block_tokens=4)) == 4


def test_prompt_blocks_are_chained_stable_hashes() -> None:
    text = "a" * 64 + "b" * 64
    first = hashlib.blake2b(b"a" * 64, digest_size=8).digest()
    second = hashlib.blake2b(first + b"b" * 64, digest_size=8).digest()
    assert timing.prompt_blocks(text) == [int.from_bytes(first, "big"),
                                          int.from_bytes(second, "big")]


def test_prompts_sharing_a_prefix_share_leading_blocks() -> None:
    system = "You are a helpful assistant. " * 10  # 290 characters: 4 full blocks
    one = timing.prompt_blocks(system + "What is the capital of France?" * 3)
    two = timing.prompt_blocks(system + "Tell me a story about a brave cat." * 3)
    assert one[:4] == two[:4]
    assert one[4:] and two[4:] and one[4] != two[4]
    # a different first block changes every block after it
    three = timing.prompt_blocks("Z" + system[1:] + "What is the capital of France?" * 3)
    assert not set(one) & set(three)


def test_output_length_draws_around_the_default_and_obeys_the_limit() -> None:
    profile = dataclasses.replace(GPU8, default_output_tokens=100)
    lengths = [timing.output_length(profile, random.Random(i))[0] for i in range(200)]
    assert min(lengths) >= 50 and max(lengths) <= 150
    assert len(set(lengths)) > 10
    assert timing.output_length(profile, random.Random(1)) == \
        timing.output_length(profile, random.Random(1))
    assert timing.output_length(profile, random.Random(1), limit=5) == (5, "length")
    assert timing.output_length(profile, random.Random(1), limit=0) == (0, "length")
    assert timing.output_length(profile, random.Random(1), limit=10_000) == (10_000, "length")
    assert timing.output_length(profile, random.Random(1), limit=-1)[1] == "stop"


def test_output_length_consumes_the_same_randomness_with_or_without_a_limit() -> None:
    a, b = random.Random(7), random.Random(7)
    timing.output_length(GPU8, a)
    timing.output_length(GPU8, b, limit=3)
    assert a.random() == b.random()


def test_stable_seed_is_deterministic_and_discriminating() -> None:
    assert timing.stable_seed(0, None, "hi") == timing.stable_seed(0, None, "hi")
    assert timing.stable_seed(0, None, "hi") != timing.stable_seed(1, None, "hi")
    assert timing.stable_seed(0, 5, "hi") != timing.stable_seed(0, None, "hi")
    assert 0 <= timing.stable_seed("x") < 2**64


# -- prefix cache --------------------------------------------------------------------------


def test_cache_matches_leading_blocks_only() -> None:
    cache = PrefixCache(100)
    cache.insert([1, 2, 3])
    assert cache.match([1, 2, 3, 4]) == 3
    assert cache.match([1, 2, 9, 3]) == 2
    assert cache.match([2, 3]) == 2
    assert cache.match([9, 1, 2]) == 0
    assert cache.match([]) == 0


def test_cache_evicts_least_recently_used_tails_first() -> None:
    cache = PrefixCache(4)
    cache.insert([1, 2])
    cache.insert([3, 4])
    cache.insert([5])  # evicts the tail of the oldest chain, not its head
    assert 2 not in cache and 1 in cache
    assert cache.match([1, 2]) == 1
    cache.insert([1, 2])  # refreshed: now [3, 4] is the oldest
    cache.insert([6])
    assert 4 not in cache and len(cache) == 4


def test_match_does_not_refresh_blocks() -> None:
    cache = PrefixCache(2)
    cache.insert([1])
    cache.insert([2])
    assert cache.match([1]) == 1
    cache.insert([3])
    assert 1 not in cache


def test_cache_keeps_the_head_of_a_chain_longer_than_it() -> None:
    cache = PrefixCache(3)
    cache.insert([1, 2, 3, 4, 5])
    assert cache.match([1, 2, 3, 4, 5]) == 3
    assert len(cache) == 3


def test_empty_cache_holds_nothing() -> None:
    cache = PrefixCache(0)
    cache.insert([1, 2])
    assert len(cache) == 0 and cache.match([1]) == 0
    with pytest.raises(ValueError):
        PrefixCache(-1)


def test_clear() -> None:
    cache = PrefixCache(5)
    cache.insert([1, 2])
    cache.clear()
    assert cache.match([1, 2]) == 0


block_lists = st.lists(st.integers(min_value=0, max_value=30), max_size=12)


@given(capacity=st.integers(min_value=0, max_value=20), inserts=st.lists(block_lists, max_size=15),
       probe=block_lists)
def test_cache_invariants(capacity: int, inserts: list[list[int]], probe: list[int]) -> None:
    cache = PrefixCache(capacity)
    for blocks in inserts:
        cache.insert(blocks)
        assert len(cache) <= capacity
        # what was just inserted is found, as far as it fits
        assert cache.match(blocks) >= min(len(blocks), capacity)
    assert 0 <= cache.match(probe) <= len(probe)


@given(blocks=st.lists(st.integers(), unique=True, max_size=40),
       capacity=st.integers(min_value=0, max_value=50))
def test_inserted_chain_matches_up_to_capacity(blocks: list[int], capacity: int) -> None:
    cache = PrefixCache(capacity)
    cache.insert(blocks)
    assert cache.match(blocks) == min(len(blocks), capacity)


@given(text=st.text(max_size=600), cut=st.integers(min_value=0, max_value=600))
def test_blocks_of_a_prefix_are_a_prefix_of_the_blocks(text: str, cut: int) -> None:
    blocks = timing.prompt_blocks(text)
    prefix = timing.prompt_blocks(text[:cut])
    assert blocks[: len(prefix)] == prefix
    assert len(blocks) == len(text) // (timing.BLOCK_TOKENS * timing.CHARS_PER_TOKEN)
