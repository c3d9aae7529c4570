"""``intelligent``, the default: the node with the smallest expected time to first token.

For each candidate node *i* and the request's model *m*:

    expected TTFT = wait for a slot + cold load (if not loaded) + overhead
                    + uncached prompt tokens x prefill time per token (slowed by busy slots)

- *wait for a slot*: zero with a free slot; otherwise the requests ahead (busy beyond the
  slots, plus those the node reports queued) times the node's mean service time for the
  model, over its slots. This is the load guard, sized for Ollama's one to four slots per
  model rather than the peers' thresholds of 64 requests.
- *cold load*: seconds to read the model (base + size / rate, slower nodes slower); a model
  larger than a node's memory cannot go there at all.
- *uncached tokens*: the prompt minus the leading blocks the prefix index says the node holds,
  so prefix and KV-cache locality count exactly as much as the prefill time they save.
- speeds come from the node x model performance profile once requests have been observed,
  else from the node's hardware speed factor.

Everything but the request-specific part is kept per (model, node) in arrays updated through
the view's listeners when something changes, so a decision is two in-place vector operations,
an argmin and a few scalar comparisons for the nodes holding the prompt's prefix. Fallbacks
are ranked only when the first node fails, from the view as it is then.

`wait` is set when the best node has no free slot: a gateway with an admission queue then
holds the request until a slot frees anywhere (late binding) instead of queueing it in one
node.
"""

from __future__ import annotations

import math

import numpy as np

from ollamamax.scheduler.decide import Candidates
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.view import ClusterView

# Defaults until a node's profile has been observed (reference node, speed factor 1).
PREFILL_S_PER_TOKEN = 0.00025  # ~4,000 tokens/s: llama.cpp on a current GPU, an 8B model
SERVICE_S = 2.0  # a typical request's time on a slot
OVERHEAD_S = 0.03
LOAD_BASE_S = 2.0  # cold load: fixed part
LOAD_BYTES_PER_S = 2e9  # and reading the weights (NOTES: 1.5-3 GB/s from disk)
SLOWDOWN_AT_FULL = 0.5  # per-token times grow by half when every slot is busy (llm-d: 1.5-3.5x)
INF = math.inf


class Intelligent:
    name = "intelligent"

    def __init__(self, seed: int = 0) -> None:
        del seed  # deterministic
        self.view: ClusterView | None = None
        self.base: list[np.ndarray] = []  # per model: every cost except the prompt's prefill
        self.rate: list[np.ndarray] = []  # per model: prefill seconds per token, slowdown in
        self._scratch = np.empty(0)  # one decision's estimates (decisions never overlap)

    # -- keeping the arrays current --------------------------------------------------------

    def bind(self, view: ClusterView) -> None:
        self.view = view
        self.base, self.rate = [], []
        self._scratch = np.empty(view.capacity)
        for m in range(len(view.model_names)):
            self.model_added(view, m)
        view.subscribe(self)

    def model_added(self, view: ClusterView, model: int) -> None:
        self.base.append(np.full(view.capacity, INF))
        self.rate.append(np.full(view.capacity, PREFILL_S_PER_TOKEN))
        for i in range(view.n):
            self._refresh(view, i, model)

    def resized(self, view: ClusterView) -> None:
        self._scratch = np.empty(view.capacity)
        self.base = [_grown(a, view.capacity, INF) for a in self.base]
        self.rate = [_grown(a, view.capacity, PREFILL_S_PER_TOKEN) for a in self.rate]

    def node_changed(self, view: ClusterView, node: int) -> None:
        for m, has in enumerate(view.cells["has"]):
            if has[node] or self.base[m][node] != INF:
                self._refresh(view, node, m)

    def cell_changed(self, view: ClusterView, node: int, model: int) -> None:
        self._refresh(view, node, model)

    def _refresh(self, view: ClusterView, i: int, m: int) -> None:
        c = view.cells
        if not (c["has"][m][i] and view.routable[i]):
            self.base[m][i] = INF
            self.rate[m][i] = PREFILL_S_PER_TOKEN
            return
        speed = float(view.speed[i]) or 1.0
        profile = view.profiles.get(i, m)
        slots = int(c["slots"][m][i]) or 1
        busy = view.used_slots(i, m)
        per_token = PREFILL_S_PER_TOKEN / speed
        service = SERVICE_S / speed
        overhead = OVERHEAD_S / speed
        if profile is not None and profile.requests - profile.errors > 0:
            if profile.prefill_tps > 0:
                per_token = 1.0 / profile.prefill_tps
            if profile.latencies and profile.decode_tps > 0:
                service = profile.ttft + 128 / profile.decode_tps
            overhead = min(overhead, profile.ttft)
        if c["loaded"][m][i]:
            load = 0.0
            ahead = busy + int(c["queued"][m][i]) - slots + 1
            wait = ahead * service / slots if ahead > 0 else 0.0
        else:
            load = self._load_cost(view, i, m, speed)
            wait = 0.0
        self.rate[m][i] = per_token * (1.0 + SLOWDOWN_AT_FULL * min(busy, slots) / slots)
        self.base[m][i] = wait + load + overhead

    @staticmethod
    def _load_cost(view: ClusterView, i: int, m: int, speed: float) -> float:
        size = view.model_size[m]
        total = int(view.mem_total[i])
        if total and size > total:
            return INF  # it cannot fit on this node at all
        cost = (LOAD_BASE_S + size / LOAD_BYTES_PER_S) / speed
        free = int(view.mem_free[i])
        if total and size > free:
            cost *= 2  # something must be evicted first, if anything is idle
        return cost

    # -- deciding --------------------------------------------------------------------------

    def choose(self, request: RouteRequest, candidates: Candidates, view: ClusterView,
               now: float) -> Decision:
        m = candidates.model
        if candidates.panic:  # every holder is down: try them, least busy first
            idx = candidates.indices
            order = tuple(int(i) for i in idx[np.argsort(view.in_flight[idx], kind="stable")])
            return Decision(order[0], order[1:], "every holder is down")
        est = self._estimate(request, candidates, m, self._scratch)
        best = int(est.argmin())
        best_cost = est.item(best)
        # The prefix only lowers the cost of the few nodes holding it: compare them as scalars.
        cached = view.prefixes.matches(request.prefix) if request.prefix else {}
        for node, cost in self._cached_costs(request, m, est, cached):
            if cost < best_cost:
                best, best_cost = node, cost
        if best_cost == INF:  # nothing with a finite cost (too big everywhere): try anyway
            best = int(candidates.indices[0])
        c = view.cells
        loaded = c["loaded"][m].item(best)
        wait = loaded and c["slots"][m].item(best) <= c["busy"][m].item(best) + \
            c["reported_busy"][m].item(best)
        reason = ("prefix cached, " if best in cached else "") + (
            "waits for a slot" if wait else "loaded" if loaded else "cold load")
        return Decision(best, lambda: self._ranked(request, candidates, view), reason, wait)

    def _estimate(self, request: RouteRequest, candidates: Candidates, m: int,
                  out: np.ndarray) -> np.ndarray:
        """Expected TTFT per node, before prefix savings (into `out`)."""
        np.multiply(self.rate[m], request.prompt_tokens, out=out)
        out += self.base[m]
        if candidates.extra is not None:
            out[~candidates.mask] = INF
        return out

    def _cached_costs(self, request: RouteRequest, m: int, est: np.ndarray,
                      cached: dict[int, int]) -> list[tuple[int, float]]:
        tokens = request.prompt_tokens
        if not cached or not tokens:
            return []
        per_block = tokens / len(request.prefix)
        rate = self.rate[m]
        return [(node, est.item(node) - min(blocks * per_block, tokens) * rate.item(node))
                for node, blocks in cached.items()]

    def _ranked(self, request: RouteRequest, candidates: Candidates,
                view: ClusterView) -> tuple[int, ...]:
        """Every finite-cost candidate, cheapest first, from the view as it is when asked."""
        m = candidates.model
        est = self._estimate(request, candidates, m, np.empty(view.capacity))
        cached = view.prefixes.matches(request.prefix) if request.prefix else {}
        for node, cost in self._cached_costs(request, m, est, cached):
            est[node] = cost
        order = np.argsort(est[: view.n], kind="stable")
        return tuple(int(i) for i in order if est[i] < INF)


def _grown(a: np.ndarray, capacity: int, fill: float) -> np.ndarray:
    out = np.full(capacity, fill)
    out[: len(a)] = a
    return out
