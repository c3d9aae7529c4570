"""``sglang_cache_aware``: the SGLang router's default policy, `cache_aware`.

Source: `sgl-router/src/policies/cache_aware.rs` (`CacheAwarePolicy::select_worker`) and
`tree.rs` (`prefix_match`, `get_smallest_tenant`); thresholds from the launcher's defaults
(`sglang_router/router_args.py`: `cache_threshold = 0.3`, `balance_abs_threshold = 64`,
`balance_rel_threshold = 1.5`; the Rust `CacheAwareConfig::default()` of some versions says
0.5 / 32 / 1.1, but the router as launched uses the Python arguments).

1. Loads are the router-side requests in flight of *every* worker of the model, healthy or
   not (`workers.iter().map(|w| w.load())`). Imbalanced when ``max - min > 64`` and
   ``max > 1.5 x min``: then the least loaded *healthy* worker (`min_by_key`, so the first
   in worker order on a tie).
2. Otherwise the model's approximate radix tree gives the longest cached prefix; match rate
   = matched / request length. Above 0.3 the worker holding that longest match, else the
   worker whose tree is smallest (`get_smallest_tenant`). Both pick among equals by walking
   a `DashMap`, whose order is arbitrary but fixed for the router's lifetime: modelled as a
   per-instance random order of the nodes (`tie_rank`), not as a fresh draw each time.
3. If the worker picked in step 2 is not healthy, the *first* healthy worker, whatever its
   load or cache (`healthy_indices.first()`).

Mapping: the tree is `view.prefixes` restricted to present holders of the model (SGLang keeps
one tree per model whose tenants are that model's workers); lengths are in blocks, not
characters; tree size is `view.prefixes.size(node)` (blocks the node holds, over all models);
"healthy worker" is a candidate. Tree sizes are cached per node and re-read for the nodes the
view reported changed since the last decision (`Router` records a prompt's blocks right after
`view.started`, whose cell change marks the node), so no decision loops over every node.
Fallbacks: by the rule that chose (load; or match length, then tree size), then tie rank.
"""

from __future__ import annotations

import numpy as np

from ollamamax.scheduler.decide import Candidates
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.strategies._hashing import stable_hash
from ollamamax.scheduler.strategies._ordering import aligned, as_tuple
from ollamamax.scheduler.view import ClusterView

CACHE_THRESHOLD = 0.3
BALANCE_ABS_THRESHOLD = 64
BALANCE_REL_THRESHOLD = 1.5


def is_imbalanced(max_load: int, min_load: int) -> bool:
    return (max_load - min_load > BALANCE_ABS_THRESHOLD
            and max_load > min_load * BALANCE_REL_THRESHOLD)


class SGLangCacheAware:
    name = "sglang_cache_aware"

    def __init__(self, seed: int = 0) -> None:
        self.salt = np.random.default_rng(seed).bytes(8)
        self.view: ClusterView | None = None
        self.sizes = np.zeros(0, np.int64)  # tree size per node, as last read
        self.stale: set[int] = set()
        self.tie_rank = np.zeros(0, np.uint64)

    # -- keeping tree sizes and tie ranks current ------------------------------------------

    def bind(self, view: ClusterView) -> None:
        self.view = view
        self.sizes = np.zeros(view.capacity, np.int64)
        self.stale = set(range(view.n))
        self.tie_rank = np.zeros(0, np.uint64)
        view.subscribe(self)

    def node_changed(self, view: ClusterView, node: int) -> None:
        if view is self.view:
            self.stale.add(node)

    def cell_changed(self, view: ClusterView, node: int, model: int) -> None:
        if view is self.view:
            self.stale.add(node)

    def model_added(self, view: ClusterView, model: int) -> None:
        """Tree sizes are per node."""

    def resized(self, view: ClusterView) -> None:
        if view is self.view:
            grown = np.zeros(view.capacity, np.int64)
            grown[: len(self.sizes)] = self.sizes
            self.sizes = grown

    def _refresh(self, view: ClusterView) -> None:
        if self.view is not view:
            self.bind(view)
        for node in self.stale:
            self.sizes[node] = view.prefixes.size(node)
        self.stale.clear()
        if len(self.tie_rank) < view.n:
            fresh = [stable_hash(self.salt + view.ids[i].encode())
                     for i in range(len(self.tie_rank), view.n)]
            self.tie_rank = np.concatenate([self.tie_rank, np.array(fresh, np.uint64)])

    # -- deciding --------------------------------------------------------------------------

    def choose(self, request: RouteRequest, candidates: Candidates, view: ClusterView,
               now: float) -> Decision:
        self._refresh(view)
        n = view.n
        is_worker = view.has[candidates.model][:n] & view.present[:n]
        workers = np.flatnonzero(is_worker)
        loads = view.in_flight[workers]
        if is_imbalanced(int(loads.max()), int(loads.min())):
            return self._least_loaded(candidates, view)
        return self._cache_aware(request, candidates, view, is_worker)

    def _least_loaded(self, candidates: Candidates, view: ClusterView) -> Decision:
        idx = candidates.indices
        load = view.in_flight[idx].copy()
        node = int(idx[int(load.argmin())])
        return Decision(node, lambda: as_tuple(idx[np.lexsort((idx, load))]),
                        f"imbalanced: least loaded, {load.min()} in flight")

    def _cache_aware(self, request: RouteRequest, candidates: Candidates, view: ClusterView,
                     is_worker: np.ndarray) -> Decision:
        held = _matched_blocks(view, request.prefix, is_worker)
        rate = max(held.values()) / len(request.prefix) if held else 0.0
        if rate > CACHE_THRESHOLD:
            best = max(held.values())
            tied = np.array(sorted(k for k, v in held.items() if v == best))
            target, why = self._first(tied), f"prefix match {rate:.0%}"
        else:
            workers = np.flatnonzero(is_worker)
            sizes = self.sizes[workers]
            target, why = self._first(workers[sizes == sizes.min()]), "smallest tree"
        if not candidates.mask[target]:
            target, why = int(candidates.indices[0]), f"{why} on a down node: first healthy"
        idx = candidates.indices
        size, rank = self.sizes[idx], self.tie_rank[idx]  # copies: fancy indexing
        if rate <= CACHE_THRESHOLD:
            held = {}
        return Decision(target, lambda: _ranked(idx, held, size, rank), why)

    def _first(self, nodes: np.ndarray) -> int:
        """Among equals, the one a DashMap walk would meet first (a fixed random order)."""
        return int(nodes[int(self.tie_rank[nodes].argmin())])


def _matched_blocks(view: ClusterView, prefix: tuple[int, ...],
                    is_worker: np.ndarray) -> dict[int, int]:
    """Leading blocks held, for the model's workers that hold at least the first block."""
    if not prefix:
        return {}
    return {node: k for node, k in view.prefixes.matches(prefix).items()
            if node < len(is_worker) and is_worker[node]}


def _ranked(idx: np.ndarray, held: dict[int, int], size: np.ndarray,
            rank: np.ndarray) -> tuple[int, ...]:
    """Longest match first (when the match decided), then smallest tree, then tie rank."""
    return as_tuple(idx[np.lexsort((rank, size, -aligned(idx, held)))])
