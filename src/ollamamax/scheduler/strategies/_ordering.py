"""Small helpers the strategies share to turn arrays of node numbers into fallback tuples.

Fallbacks are computed lazily (only when the first node fails), so every helper here takes
arrays captured when the decision was made: the view may have changed since.
"""

from __future__ import annotations

import numpy as np

SEED_RANGE = 2**63  # a child seed drawn per decision keeps the main generator's use fixed


def as_tuple(nodes: np.ndarray) -> tuple[int, ...]:
    return tuple(nodes.tolist())


def ranked(nodes: np.ndarray, *keys: np.ndarray) -> tuple[int, ...]:
    """`nodes` ordered by `keys` (first key most significant), then by node number."""
    order = np.lexsort((nodes, *reversed(keys)))
    return as_tuple(nodes[order])


def ranked_desc_shuffled(nodes: np.ndarray, score: np.ndarray, seed: int) -> tuple[int, ...]:
    """Highest score first; equal scores in a random order (shuffle, then a stable sort)."""
    perm = np.random.default_rng(seed).permutation(len(nodes))
    order = perm[np.argsort(-score[perm], kind="stable")]
    return as_tuple(nodes[order])


def pick_random(rng: np.random.Generator, nodes: np.ndarray) -> int:
    return int(nodes[int(rng.integers(len(nodes)))])


def aligned(nodes: np.ndarray, values: dict[int, int]) -> np.ndarray:
    """``values[node]`` for each of the sorted `nodes`, 0 where a node has no value."""
    out = np.zeros(len(nodes), np.int64)
    if values:
        keys = np.fromiter(values.keys(), np.int64, len(values))
        pos = np.searchsorted(nodes, keys)
        found = pos < len(nodes)
        found[found] &= nodes[pos[found]] == keys[found]
        out[pos[found]] = np.fromiter(values.values(), np.int64, len(values))[found]
    return out
