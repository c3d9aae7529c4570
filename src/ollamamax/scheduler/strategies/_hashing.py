"""Stable 64-bit hashes: the same in every process and run, unlike Python's `hash`."""

from __future__ import annotations

import hashlib

import numpy as np

_U64 = np.uint64
GOLDEN = _U64(0x9E3779B97F4A7C15)


def stable_hash(data: bytes) -> int:
    """64 bits of BLAKE2b."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser over a uint64 array (wrapping arithmetic)."""
    z = x + GOLDEN
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))
