from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import pairwise

import numpy as np
import pytest

from ollamamax.errors import ConfigError
from ollamamax.sim import workloads as w
from ollamamax.sim.workloads import BlockIds, WorkloadOptions


def build(name: str, **kwargs) -> w.Workload:
    kwargs.setdefault("rate", 2.0)
    return w.build(WorkloadOptions(name=name, **kwargs))


def test_block_ids_share_exactly_the_common_part() -> None:
    ids = BlockIds(64)
    system = ids.extend(w.EMPTY, 150)  # two full blocks and 22 tokens
    a, b = ids.extend(system, 100), ids.extend(system, 100)
    assert len(system.blocks) == 2 and a.tokens == b.tokens == 250
    assert a.blocks[:2] == b.blocks[:2] == system.blocks
    # the block holding the end of the system prompt and the start of each question differs
    assert len(a.blocks) == 3 and a.blocks[2] != b.blocks[2]


def test_shared_prefix_has_sglang_shapes_and_group_sharing() -> None:
    wl = build("shared-prefix")
    assert len(wl.requests) == 1024 and wl.block_tokens == 64
    assert {(r.prompt_tokens, r.output_tokens) for r in wl.requests} == {(2048 + 128, 256)}
    by_group = defaultdict(list)
    for r in wl.requests:
        by_group[r.session].append(r.prefix)
    assert len(by_group) == 64
    assert {len(p) for p in by_group.values()} == {16}  # uniform: 16 prompts a group per round
    system_blocks = 2048 // 64
    for prefixes in by_group.values():
        assert len({p[:system_blocks] for p in prefixes}) == 1  # the system prompt is shared
        assert len({p[system_blocks:] for p in prefixes}) == 16  # every question is new
    heads = {p[0][0] for p in by_group.values()}
    assert len(heads) == 64  # groups share nothing with each other


def test_shared_prefix_zipf_groups_have_decreasing_popularity() -> None:
    wl = build("shared-prefix", zipf=1.0, requests=4000)
    counts = Counter(r.session for r in wl.requests)
    assert counts[0] > counts[8] > counts[63]


def test_multi_turn_prompts_extend_the_previous_turn_and_its_answer() -> None:
    wl = build("multi-turn", requests=600, sessions=8)
    turns = defaultdict(list)
    for r in wl.requests:
        turns[r.session].append(r)
    assert max(len(t) for t in turns.values()) >= 3
    arrivals = [r.arrival for r in wl.requests]
    assert arrivals == sorted(arrivals)
    sessions_seen_interleaved = len({r.session for r in wl.requests[:20]})
    assert sessions_seen_interleaved > 1
    for chat in turns.values():
        for before, after in pairwise(chat):
            assert after.prompt_tokens > before.prompt_tokens + before.output_tokens
            assert after.prefix[: len(before.answer_prefix)] == before.answer_prefix
            assert before.answer_prefix[: len(before.prefix)] == before.prefix
            assert after.model == before.model


def test_multi_turn_users_send_the_next_turn_only_after_reading_the_answer() -> None:
    wl = build("multi-turn", requests=2000, rate=20.0, sessions=4)
    turns = defaultdict(list)
    for r in wl.requests:
        turns[r.session].append(r)
    pairs = [(a, b) for chat in turns.values() for a, b in pairwise(chat)]
    assert len(pairs) > 1000
    for before, after in pairs:
        read = w.READ_S + before.output_tokens / w.READ_TOKENS_PER_S
        assert after.arrival >= before.arrival + read
    # few chats were asked for: more started when nobody was ready to write
    assert len(turns) > 4 + len(wl.requests) / 8


def test_zipf_models_popularity_follows_rank() -> None:
    wl = build("zipf-models", requests=20000)
    assert len(wl.models) == 50 and wl.max_loaded == 3 and wl.keep_alive == 300.0
    ranked = list(wl.models)  # most popular first
    counts = Counter(r.model for r in wl.requests)
    assert counts[ranked[0]] > counts[ranked[4]] > counts[ranked[30]]
    assert counts[ranked[0]] / len(wl.requests) == pytest.approx(1 / sum(1 / k for k in range(1, 51)),
                                                                  rel=0.1)
    assert all(0.3e9 < size < 25e9 for size in wl.models.values())


def test_low_sharing_prompts_share_no_block() -> None:
    wl = build("low-sharing", requests=500)
    blocks = [b for r in wl.requests for b in r.prefix]
    assert len(blocks) == len(set(blocks))
    assert all(len(r.prefix) == r.prompt_tokens // 64 for r in wl.requests)


def test_poisson_and_gamma_arrivals_keep_the_rate_and_set_the_burstiness() -> None:
    rng = np.random.default_rng(1)
    for cv in (1.0, 3.0):
        times = w.arrival_times(5.0, rng, cv=cv, count=20000)
        gaps = np.diff(times)
        assert 1 / gaps.mean() == pytest.approx(5.0, rel=0.1)
        assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)
    within = w.arrival_times(5.0, rng, duration=100.0)
    assert within[-1] <= 100.0 and len(within) == pytest.approx(500, rel=0.2)


def test_load_is_a_fraction_of_the_capacity_for_the_workloads_mean_sizes() -> None:
    seen = []

    def capacity(prompt: float, output: float) -> float:
        seen.append((prompt, output))
        return 10.0

    wl = w.build(WorkloadOptions(name="shared-prefix", load=0.5), capacity)
    assert wl.rate == 5.0 and seen == [(2176.0, 256.0)]


def test_same_seed_same_workload_and_another_seed_another() -> None:
    a, b = build("multi-turn", seed=3), build("multi-turn", seed=3)
    c = build("multi-turn", seed=4)
    assert a.requests == b.requests
    assert a.requests != c.requests


def test_mooncake_trace_is_read_in_seconds_with_its_block_ids(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    rows = [{"timestamp": 0, "input_length": 1100, "output_length": 10, "hash_ids": [1, 2, 3]},
            {"timestamp": 2500, "input_length": 600, "output_length": 5, "hash_ids": [1, 4]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    wl = build("trace", trace=str(path), rate=None)
    assert wl.block_tokens == 512
    assert [(r.arrival, r.prompt_tokens, r.output_tokens, r.prefix) for r in wl.requests] == [
        (0.0, 1100, 10, (1, 2, 3)), (2.5, 600, 5, (1, 4))]


def test_a_trace_replays_at_the_rate_asked(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"timestamp": 1000 * k, "input_length": 100,
                                        "output_length": 5, "hash_ids": [k]}) + "\n"
                            for k in range(11)))
    wl = build("trace", trace=str(path), rate=2.0)
    assert wl.requests[-1].arrival == pytest.approx(5.0)


def test_csv_trace_has_unshared_prefixes(tmp_path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n"
                    "0.5,300,20\n0.25,130,7\n")
    wl = build("trace", trace=str(path), trace_format="csv", rate=None)
    assert [(r.arrival, r.prompt_tokens, r.output_tokens) for r in wl.requests] == [
        (0.0, 130, 7), (0.25, 300, 20)]
    a, b = (r.prefix for r in wl.requests)
    assert len(a) == 2 and len(b) == 4 and not set(a) & set(b)


def test_a_missing_trace_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build("trace", trace=str(tmp_path / "absent.jsonl"))
    with pytest.raises(ConfigError, match="needs --trace"):
        WorkloadOptions(name="trace")


def test_a_malformed_csv_trace_names_the_line(tmp_path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("arrived_at,num_prefill_tokens\n1,2\n")
    with pytest.raises(ConfigError, match=r"bad.csv:2"):
        build("trace", trace=str(path), trace_format="csv")


def test_models_option_takes_a_count_or_names_with_sizes() -> None:
    assert len(w.parse_models("5")) == 5
    assert w.parse_models("a:1b=1.5G, b:7b=4000") == (("a:1b", 1_500_000_000), ("b:7b", 4000))
    with pytest.raises(ConfigError):
        w.parse_models("a:1b")
    with pytest.raises(ConfigError):
        WorkloadOptions(name="nope")


def test_shifting_models_moves_popularity_from_model_to_model_over_time() -> None:
    wl = build("shifting-models", requests=6000, rate=10.0)
    assert len(wl.models) == w.SHIFTING_MODELS and wl.max_loaded == 3
    names = list(wl.models)
    period = w.SHIFT_PERIOD_S

    def top(lo: float, hi: float) -> str:
        return Counter(r.model for r in wl.requests if lo <= r.arrival < hi).most_common(1)[0][0]

    # early in each period the ranking is the rotated Zipf one: its first model leads
    assert top(0, period * 0.2) == names[0]
    assert top(period, period * 1.2) == names[w.SHIFT_STEP]
    assert top(2 * period, 2 * period * 1.1) == names[2 * w.SHIFT_STEP]
