"""Every swappable implementation, by flag name and variant name.

Each pair is the optimisation catalogue's "before" (kept as a baseline) and its optimised twin,
behind one interface, chosen by a feature flag (`flags.py`) that can change at run time and
roll back. Per-request flags choose per request (a share of requests may use a new variant);
component flags switch a whole component at once (percent 100 only).

| flag | variants (default first) | acts on |
| --- | --- | --- |
| ``scheduler.strategy`` | the registered strategies | every routing decision (per request) |
| ``scheduler.weights`` | ``cached``, ``recompute`` | `intelligent`'s weights (per request) |
| ``scheduler.constraints`` | ``index``, ``nested_loop`` | label filtering (per request) |
| ``scheduler.queue_order`` | ``heap``, ``sorted_list`` | the admission queue (waiting requests move) |
| ``scheduler.history`` | ``ring``, ``list`` | the task history (rows move) |
| ``scheduler.variance`` | ``welford``, ``two_pass`` | running statistics (`scheduler.stats`) |
| ``models.versions`` | ``indexed``, ``linear``, ``merkle`` | catalogue diffs for model sync |
| ``models.holders`` | ``indexed``, ``linear`` | "which peers hold blob X" |
| ``models.bandwidth`` | ``ring``, ``list`` | per-peer bytes over a sliding window |
| ``models.buffers`` | ``pool``, ``fresh`` | transfer chunk buffers |

The defaults are the faster variant as measured by ``ollamamax bench catalog`` on this code
(docs/benchmarks.md); where the catalogue's "after" does not pay in Python (``merkle``: trie,
Bloom filters and hash trees are slower here than one hash index), the simpler variant is the
default and the figure says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ollamamax import registry
from ollamamax.flags import FlagDef

STRATEGY = "scheduler.strategy"
WEIGHTS = "scheduler.weights"
CONSTRAINTS = "scheduler.constraints"
QUEUE_ORDER = "scheduler.queue_order"
HISTORY = "scheduler.history"
VARIANCE = "scheduler.variance"
VERSIONS = "models.versions"
HOLDERS = "models.holders"
BANDWIDTH = "models.bandwidth"
BUFFERS = "models.buffers"


@dataclass(frozen=True)
class Pair:
    flag: str
    variants: dict[str, str]  # variant -> "module:attr", the default first
    baseline: str  # the catalogue's "before"
    per_request: bool
    help: str

    @property
    def default(self) -> str:
        return next(iter(self.variants))


_S = "ollamamax.scheduler"
_M = "ollamamax.models"

PAIRS: tuple[Pair, ...] = (
    Pair(WEIGHTS, {"cached": f"{_S}.strategies.intelligent:Intelligent",
                   "recompute": f"{_S}.baselines:RecomputingIntelligent"}, "recompute", True,
         "intelligent's per-node weights: kept current by view events, or recomputed for "
         "every node on every selection"),
    Pair(CONSTRAINTS, {"index": f"{_S}.constraints:indexed_label_mask",
                       "nested_loop": f"{_S}.constraints:nested_label_mask"}, "nested_loop", True,
         "label constraints: a precomputed array per label, or a loop over nodes x labels"),
    Pair(QUEUE_ORDER, {"heap": f"{_S}.ordering:HeapOrder",
                       "sorted_list": f"{_S}.ordering:SortedListOrder"}, "sorted_list", False,
         "admission queue ordering: a binary heap, or a sorted list with linear-scan insertion"),
    Pair(HISTORY, {"ring": f"{_S}.history:TaskHistory", "list": f"{_S}.baselines:ListHistory"},
         "list", False, "task history: a numpy ring buffer, or a list scanned in Python"),
    Pair(VARIANCE, {"welford": f"{_S}.stats:WelfordStats", "two_pass": f"{_S}.stats:TwoPassStats"},
         "two_pass", False, "running variance: Welford's single pass, or two passes per query"),
    Pair(VERSIONS, {"indexed": f"{_M}.versions:IndexedVersions",
                    "linear": f"{_M}.versions:LinearVersions",
                    "merkle": f"{_M}.versions:MerkleVersions"}, "linear", False,
         "model catalogue diff: a hash index, pairwise linear comparison, or trie + Bloom + "
         "hash tree"),
    Pair(HOLDERS, {"indexed": f"{_M}.holders:IndexedPeers", "linear": f"{_M}.holders:LinearPeers"},
         "linear", False, "blob holders: a hash index, or a linear search over peers"),
    Pair(BANDWIDTH, {"ring": f"{_M}.bandwidth:RingWindow", "list": f"{_M}.bandwidth:ListWindow"},
         "list", False, "per-peer bandwidth window: a ring of slot totals, or a list of transfers"),
    Pair(BUFFERS, {"pool": f"{_M}.buffers:BufferPool", "fresh": f"{_M}.buffers:FreshBuffers"},
         "fresh", False, "transfer buffers: reused from a pool, or allocated per chunk"),
)
PAIR = {pair.flag: pair for pair in PAIRS}


def load(flag: str, variant: str) -> Any:
    """The class or function implementing `variant` of `flag` (``models.versions``...)."""
    pair = PAIR.get(flag)
    if pair is None:
        raise KeyError(flag)
    return registry.load(flag, pair.variants, variant)


def definitions(strategy: str = "intelligent") -> list[FlagDef]:
    """Every flag: the scheduler strategy (default `strategy`, from config) and each pair."""
    from ollamamax.scheduler.strategies import STRATEGIES

    if strategy not in STRATEGIES:
        registry.load("strategy", STRATEGIES, strategy)  # the error that lists the names
    names = (strategy, *sorted(set(STRATEGIES) - {strategy}))
    return [FlagDef(STRATEGY, names, strategy, True, "the routing strategy"),
            *(FlagDef(p.flag, tuple(p.variants), p.default, p.per_request, p.help)
              for p in PAIRS)]
