"""How long a simulated node takes: named profiles and pure formulas.

The model is llm-d's inference simulator's (its ``per-token`` latency calculator):

- time to first token = overhead + uncached prompt tokens x prefill time per token;
- then one token every `time_between_tokens`;
- under load both are multiplied by a factor that rises linearly from 1 at one running
  sequence to ``slowdown_at_max`` when all ``max_sequences`` are running;
- a cold load takes a fixed time plus the model's size over a read rate.

Everything here is pure: no asyncio, no clock, and randomness only from a `random.Random`
the caller seeded. The `sim` engine sleeps these durations; the cluster simulator advances
virtual time by them, so both agree on what a node would do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from ollamamax.errors import ConfigError

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text and BPE vocabularies
BLOCK_TOKENS = 16  # vLLM's and llm-d's default KV block size
GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class Profile:
    """The speed of one kind of machine running one kind of model. Times in seconds."""

    name: str
    overhead_s: float  # fixed part of the time to first token
    prefill_s_per_token: float
    decode_s_per_token: float  # time between two tokens of one sequence, unloaded
    slowdown_at_max: float = 1.0  # load factor when all max_sequences run
    max_sequences: int | None = None  # None: the node's slots (`sized`)
    load_base_s: float = 0.0
    load_bytes_per_s: float = math.inf
    embed_s_per_token: float = 0.0
    embedding_dim: int = 768
    default_output_tokens: int = 128
    memory_bytes: int = 16 * GIB
    gpu: bool = False  # models count as VRAM in /api/ps

    def __post_init__(self) -> None:
        times = (self.overhead_s, self.prefill_s_per_token, self.decode_s_per_token,
                 self.load_base_s, self.embed_s_per_token)
        if min(times) < 0:
            raise ValueError(f"profile {self.name}: times must be >= 0")
        if self.slowdown_at_max < 1:
            raise ValueError(f"profile {self.name}: slowdown_at_max must be >= 1")
        if self.load_bytes_per_s <= 0 or self.embedding_dim < 1:
            raise ValueError(f"profile {self.name}: load_bytes_per_s and embedding_dim must be > 0")
        if self.max_sequences is not None and self.max_sequences < 1:
            raise ValueError(f"profile {self.name}: max_sequences must be >= 1")

    def sized(self, slots: int) -> Profile:
        """This profile with `max_sequences` defaulted to a node's `slots`."""
        if self.max_sequences is not None:
            return self
        return dataclasses.replace(self, max_sequences=slots)


PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        # No time at all: what is left is the gateway's and the node's own overhead.
        Profile("instant", overhead_s=0.0, prefill_s_per_token=0.0, decode_s_per_token=0.0,
                embedding_dim=384, default_output_tokens=32, memory_bytes=64 * GIB),
        # SmolLM2-135M Q4_1 on one CPU thread, measured here: 130-145 tok/s decode,
        # ~1,000 tok/s prefill, 0.3 s to load its 98 MB file, embeddings of 576.
        Profile("cpu-small", overhead_s=0.005, prefill_s_per_token=0.001,
                decode_s_per_token=1 / 130, slowdown_at_max=2.0, load_base_s=0.2,
                load_bytes_per_s=1e9, embed_s_per_token=0.001, embedding_dim=576,
                memory_bytes=8 * GIB),
        # llm-d's 8B-on-H100 "balanced" per-token profile: 30 ms + 0.25 ms/token, 12 ms
        # between tokens, factor 2 under load; cold load 1-3 s + size / 2 GB/s.
        Profile("gpu-8b", overhead_s=0.030, prefill_s_per_token=0.00025,
                decode_s_per_token=0.012, slowdown_at_max=2.0, load_base_s=2.0,
                load_bytes_per_s=2e9, embed_s_per_token=0.00025, embedding_dim=4096,
                memory_bytes=80 * GIB, gpu=True),
        # 70B Q4 under llama.cpp: 22-25 tok/s decode; prefill scaled from the 8B's
        # ~6,800 tok/s by the parameter ratio (~8.75x); llm-d's 70B profile for the
        # 80 ms overhead and factor 3 under load.
        Profile("gpu-70b", overhead_s=0.080, prefill_s_per_token=0.0013,
                decode_s_per_token=1 / 23.5, slowdown_at_max=3.0, load_base_s=3.0,
                load_bytes_per_s=2e9, embed_s_per_token=0.0013, embedding_dim=8192,
                memory_bytes=80 * GIB, gpu=True),
    )
}


def get_profile(name: str) -> Profile:
    """The profile called `name`; a `ConfigError` listing the valid names otherwise."""
    profile = PROFILES.get(name)
    if profile is None:
        valid = ", ".join(sorted(PROFILES))
        raise ConfigError(f"unknown sim profile {name!r}; valid sim profiles: {valid}")
    return profile


# -- time ----------------------------------------------------------------------------------


def load_factor(profile: Profile, concurrent: int) -> float:
    """How much slower each sequence runs with `concurrent` sequences on the engine.

    Capped at ``slowdown_at_max``: llm-d never runs more than its maximum at once.
    """
    most = profile.max_sequences or 1
    if most <= 1:
        return 1.0
    running = min(max(concurrent, 1), most)
    return 1.0 + (profile.slowdown_at_max - 1.0) * (running - 1) / (most - 1)


def ttft(profile: Profile, uncached_tokens: int, concurrent: int = 1) -> float:
    """Time to first token when `uncached_tokens` of the prompt must be evaluated."""
    work = profile.overhead_s + max(uncached_tokens, 0) * profile.prefill_s_per_token
    return work * load_factor(profile, concurrent)


def time_between_tokens(profile: Profile, concurrent: int = 1) -> float:
    return profile.decode_s_per_token * load_factor(profile, concurrent)


def decode_time(profile: Profile, output_tokens: int, concurrent: int = 1) -> float:
    """From the first token to the last: the first comes with the time to first token."""
    return max(output_tokens - 1, 0) * time_between_tokens(profile, concurrent)


def load_time(profile: Profile, size_bytes: int) -> float:
    """A cold load: fixed setup plus reading the model at the profile's rate."""
    return profile.load_base_s + max(size_bytes, 0) / profile.load_bytes_per_s


def embed_time(profile: Profile, tokens: int) -> float:
    return max(tokens, 0) * profile.embed_s_per_token


# -- tokens and prompts --------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """About four characters a token; at least one for any non-empty text."""
    return -(-len(text) // CHARS_PER_TOKEN)


def prompt_blocks(text: str, block_tokens: int = BLOCK_TOKENS) -> list[int]:
    """Ids of the prompt's full blocks, each chained to all before it.

    Two prompts that share a prefix share their leading ids, as vLLM's and llm-d's block
    hashes do. blake2b, never `hash()`: ids must agree across processes and runs.
    """
    width = block_tokens * CHARS_PER_TOKEN
    ids: list[int] = []
    previous = b""
    for start in range(0, len(text) - width + 1, width):
        chunk = text[start:start + width].encode("utf-8", "surrogatepass")
        previous = hashlib.blake2b(previous + chunk, digest_size=8).digest()
        ids.append(int.from_bytes(previous, "big"))
    return ids


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from `parts` that is the same in every process (unlike `hash()`)."""
    text = "\x1f".join(repr(p) for p in parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def output_length(profile: Profile, rng: random.Random, limit: int | None = None
                  ) -> tuple[int, str]:
    """How many tokens an answer has and why it ends (``"stop"`` or ``"length"``).

    A `limit` (``num_predict``; negative means none) is the length, so a benchmark gets
    exactly the tokens it asks for; without one the answer stops by itself after a draw
    around the profile's default. The draw happens either way, so the same seed gives the
    same text with or without a limit.
    """
    mean = profile.default_output_tokens
    natural = rng.randint(max(1, mean // 2), max(1, mean + mean // 2))
    if limit is not None and limit >= 0:
        return limit, "length"
    return natural, "stop"


# -- prefix cache --------------------------------------------------------------------------


class PrefixCache:
    """Which prompt blocks a runner still holds: an LRU of block ids, O(1) per block."""

    __slots__ = ("_blocks", "capacity")

    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks < 0:
            raise ValueError("capacity_blocks must be >= 0")
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: object) -> bool:
        return block in self._blocks

    def match(self, blocks: Sequence[int]) -> int:
        """How many leading `blocks` are cached (a lookup does not refresh them)."""
        matched = 0
        for block in blocks:
            if block not in self._blocks:
                break
            matched += 1
        return matched

    def insert(self, blocks: Sequence[int]) -> None:
        """Cache `blocks` (or as many leading ones as fit) as the most recently used."""
        # Newest first in reverse, so a chain's tail is evicted before its head: a
        # lost head block would make every block after it unmatchable (vLLM frees a
        # request's blocks tail first for the same reason).
        for block in reversed(blocks[:self.capacity]):
            if block in self._blocks:
                self._blocks.move_to_end(block)
            else:
                self._blocks[block] = None
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()
