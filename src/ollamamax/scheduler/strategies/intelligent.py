"""``intelligent``, the default: the node with the smallest expected time to first token.

For each candidate node *i* and the request's model *m*:

    expected TTFT = wait for a slot + cold load (if not loaded) + overhead
                    + uncached prompt tokens x prefill time per token (slowed by busy slots)

- *wait for a slot*: zero with a free slot; otherwise until the first running request ends (a
  uniform residual of the node's mean slot time: service / (slots + 1)) and then service /
  slots per request ahead (busy beyond the slots, plus those the node reports queued). This
  is the load guard, sized for Ollama's one to four slots per model rather than the peers'
  thresholds of 64 requests. Several full nodes holding the prompt's prefix pool their
  slots: a held request goes to whichever frees one first. Taking a node's last free slot
  costs a little more, so that a request whose prefix is there (a chat's next turn) is
  likelier to find one.
- *cold load*: seconds to read the model (base + size / rate, slower nodes slower); a model
  larger than a node's memory cannot go there at all. A node already loading it for earlier
  requests costs about half (the load is under way) plus their turn; a full node must evict
  an idle model, which costs that model's reload times the chance it is asked for soon (its
  recent arrival rate: evict the least wanted), or, with every model busy, wait for one to
  drain; and the node's queue goes first. Without these, every cold load of a busy cluster
  would tie and pile onto one node, and popular models would be evicted for rare ones.
- *uncached tokens*: the prompt minus the leading blocks the prefix index says the node holds,
  so prefix and KV-cache locality count exactly as much as the prefill time they save.
- speeds come from the node x model performance profile once requests have been observed,
  else from the node's hardware speed factor. The fixed overhead is at most `OVERHEAD_S`
  unless the profile's overhead floor says the node is slower to answer than its prefill
  explains (a slow link, a proxy adding latency): then that floor, so a slowed node loses
  traffic to an equal fast one.

Everything but the request-specific part is kept per (model, node) in arrays updated through
the view's listeners when something changes, so a decision is two in-place vector operations,
an argmin and a few scalar comparisons for the nodes holding the prompt's prefix. Fallbacks
are ranked only when the first node fails, from the view as it is then.

`wait` is set when the best node has no free slot (`PIPELINE`): a gateway with an admission
queue then holds the request until a slot frees anywhere (late binding) instead of queueing
it in one node.
"""

from __future__ import annotations

import math

import numpy as np

from ollamamax.scheduler.decide import Candidates
from ollamamax.scheduler.profiles import Profile
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.view import ClusterView

# Defaults until a node's profile has been observed (reference node, speed factor 1).
PREFILL_S_PER_TOKEN = 0.00025  # ~4,000 tokens/s: llama.cpp on a current GPU, an 8B model
SERVICE_S = 2.0  # a typical request's time on a slot
OVERHEAD_S = 0.03
LOAD_BASE_S = 2.0  # cold load: fixed part
LOAD_BYTES_PER_S = 2e9  # and reading the weights (NOTES: 1.5-3 GB/s from disk)
SLOWDOWN_AT_FULL = 1.0  # per-token times double when every slot is busy (llm-d: 1.5-3.5x)
# A load that must wait for a busy resident model to drain: that many of its requests' time.
DRAIN = 4.0
# Evicting an idle model costs its reload, as likely as it is to be asked for within this
# many seconds at its recent arrival rate (the rarest idle model is taken as the victim).
EVICTION_HORIZON_S = 10.0
RATE_HALF_LIFE_S = 60.0  # of each model's arrival-rate estimate
# Requests a node gets beyond its busy slots before the gateway holds the next ones. With 1, a
# freed slot would start its next request without a round trip to the gateway (0.5 ms idle):
# that doubled an instant node's throughput, but committing one request early per node cost
# shared-prefix TTFT p99 0.12 -> 0.57 s in the routing benchmark. LLM requests last seconds.
PIPELINE = 0
# Taking a node's last free slot without its prefix costs that much more: a request holding
# its prefix there (the next turn of a chat) would find the node full and go elsewhere
# uncached or wait (multi-turn TTFT p99 0.78 -> 0.65 s in the routing benchmark).
LAST_SLOT_S = 0.6
INF = math.inf
FREE, BLOCKED = -1.0, -2.0  # `_room`: a free place; every resident model busy
_DECAY_PER_COUNT = math.log(2) / RATE_HALF_LIFE_S  # decayed count -> arrivals per second


class Intelligent:
    name = "intelligent"

    def __init__(self, seed: int = 0) -> None:
        del seed  # deterministic
        self._seen = np.zeros(0)  # per node: the `_room` the costs were made with
        self.base: list[np.ndarray] = []  # per model: every cost except the prompt's prefill
        self.rate: list[np.ndarray] = []  # per model: prefill seconds per token, slowdown in
        self._scratch = np.empty(0)  # one decision's estimates (decisions never overlap)
        self.full: list[np.ndarray] = []  # per model: loaded there with every slot busy
        self.arrivals: list[float] = []  # per model: decayed count of recent requests
        self.arrived_at: list[float] = []  # per model: when that count was last decayed

    # -- keeping the arrays current --------------------------------------------------------

    def bind(self, view: ClusterView) -> None:
        self.base, self.rate, self.full = [], [], []
        # sized first: a model's costs read every model's arrivals (eviction)
        self.arrivals = [0.0] * len(view.model_names)
        self.arrived_at = [0.0] * len(view.model_names)
        self._scratch = np.empty(view.capacity)
        self._seen = np.full(view.capacity, np.nan)
        for m in range(len(view.model_names)):
            self.model_added(view, m)
        view.subscribe(self)

    def model_added(self, view: ClusterView, model: int) -> None:
        if model == len(self.arrivals):
            self.arrivals.append(0.0)
            self.arrived_at.append(0.0)
        self.base.append(np.full(view.capacity, INF))
        self.rate.append(np.full(view.capacity, PREFILL_S_PER_TOKEN))
        self.full.append(np.zeros(view.capacity, np.bool_))
        for i in range(view.n):
            self._refresh(view, i, model)

    def resized(self, view: ClusterView) -> None:
        self._scratch = np.empty(view.capacity)
        self.full = [np.concatenate([f, np.zeros(view.capacity - len(f), np.bool_)])
                     for f in self.full]
        self._seen = np.concatenate([self._seen, np.full(view.capacity - len(self._seen),
                                                         np.nan)])
        self.base = [_grown(a, view.capacity, INF) for a in self.base]
        self.rate = [_grown(a, view.capacity, PREFILL_S_PER_TOKEN) for a in self.rate]

    def node_changed(self, view: ClusterView, node: int) -> None:
        self._seen[node] = room = self._room(view, node)
        for m, has in enumerate(view.cells["has"]):
            if has[node] or self.base[m][node] != INF:
                self._refresh(view, node, m, room)

    def cell_changed(self, view: ClusterView, node: int, model: int) -> None:
        room = self._room(view, node)
        if room == self._seen[node]:
            self._refresh(view, node, model, room)
            return
        # the room for a cold load changed: every model not loaded there costs anew
        self._seen[node] = room
        self._refresh(view, node, model, room)
        for m, loaded in enumerate(view.cells["loaded"]):
            if m != model and not loaded[node] and view.cells["has"][m][node]:
                self._refresh(view, node, m, room)

    def _room(self, view: ClusterView, i: int) -> float:
        """What making room for a cold load on node `i` costs: FREE (a place is free),
        BLOCKED (every resident model is busy) or the eviction's cost (>= 0)."""
        if view.resident[i] < view.max_loaded[i]:
            return FREE
        if not view.idle_models[i]:
            return BLOCKED
        return self._eviction_cost(view, i)

    def _refresh(self, view: ClusterView, i: int, m: int, room: float | None = None) -> None:
        c = view.cells
        if not (c["has"][m][i] and view.routable[i]):
            self.base[m][i] = INF
            self.rate[m][i] = PREFILL_S_PER_TOKEN
            self.full[m][i] = False
            return
        speed = float(view.speed[i]) or 1.0
        per_token, service, overhead = self._speeds(view.profiles.get(i, m), speed)
        busy = view.used_slots(i, m)
        if c["loaded"][m][i]:
            slots = int(c["slots"][m][i]) or 1
            load = 0.0
            ahead = busy + int(c["queued"][m][i]) - slots + 1
        else:
            slots = int(view.num_parallel[i]) or 1
            load = self._load_cost(view, i, m, speed)
            room = self._room(view, i) if room is None else room
            if busy:  # our earlier requests are already waiting for this very load
                load *= 0.5
            elif room == BLOCKED:  # every resident model is busy: the load waits for one
                load += DRAIN * service
            elif room != FREE:  # an idle model must go
                load += room
            ahead = busy - slots + 1 + int(view.queue_depth[i])
        # the first slot frees after a uniform residual (service / (slots + 1)), each one
        # after it about service / slots later
        wait = service / (slots + 1) + (ahead - 1) * service / slots if ahead > 0 else 0.0
        if ahead == 0 and c["loaded"][m][i] and busy == slots - 1:
            wait += LAST_SLOT_S
        self.rate[m][i] = per_token * (1.0 + SLOWDOWN_AT_FULL * min(busy, slots) / slots)
        self.base[m][i] = wait + load + overhead
        self.full[m][i] = bool(c["loaded"][m][i]) and busy >= slots + PIPELINE

    @staticmethod
    def _speeds(profile: Profile | None, speed: float) -> tuple[float, float, float]:
        """Prefill seconds per token, seconds a request holds a slot, fixed overhead."""
        per_token = PREFILL_S_PER_TOKEN / speed
        service = SERVICE_S / speed
        overhead = OVERHEAD_S / speed
        if profile is not None and profile.requests > profile.errors:
            if profile.prefill_tps > 0:
                per_token = 1.0 / profile.prefill_tps
            if profile.duration > 0:
                service = profile.duration
            # the profile's TTFT includes queueing at the gateway: it only lowers the default;
            # the overhead floor excludes it and raises it for a node that is slow to answer
            overhead = max(min(overhead, profile.ttft), profile.overhead)
        return per_token, service, overhead

    def _eviction_cost(self, view: ClusterView, i: int) -> float:
        """What unloading node `i`'s least wanted idle model to make room costs later: its
        reload, times the chance it is asked for again soon (its recent arrival rate)."""
        speed = float(view.speed[i]) or 1.0
        cheapest = INF
        for v, idle in enumerate(view.cells["idle"]):
            if idle[i]:
                chance = min(1.0, self._rate(v) * EVICTION_HORIZON_S)
                cheapest = min(cheapest, chance * self._load_cost(view, i, v, speed))
        return 0.0 if cheapest == INF else cheapest

    def _rate(self, m: int) -> float:
        """Model `m`'s arrivals per second as of its last request. Not decayed to now: a model
        asked for rarely keeps its estimate between requests, a long memory that routed
        zipf-models better (TTFT p99 7.1 s, mean of 3 seeds, against 8.7 s decayed to now)."""
        return self.arrivals[m] * _DECAY_PER_COUNT

    def _count_arrival(self, m: int, now: float) -> None:
        """One more request for model `m`: an exponentially decayed count (x ln2/half-life
        is the arrival rate)."""
        age = now - self.arrived_at[m]
        if age > 0:
            self.arrivals[m] *= 0.5 ** (age / RATE_HALF_LIFE_S)
            self.arrived_at[m] = now
        self.arrivals[m] += 1.0

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
        self._count_arrival(m, now)
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
        wait = loaded and self.full[m].item(best)
        if wait:
            best, wait = self._hold_or_go(view, m, est, best, best_cost, cached)
        loaded = c["loaded"][m].item(best)
        reason = ("prefix cached, " if best in cached else "") + (
            "waits for a slot" if wait else "loaded" if loaded else "cold load")
        return Decision(best, lambda: self._ranked(request, candidates, view), reason, wait)

    def _hold_or_go(self, view: ClusterView, m: int, est: np.ndarray, best: int,
                    best_cost: float, cached: dict[int, int]) -> tuple[int, bool]:
        """The best node is full: hold the request for a slot there, or start it now elsewhere.

        Held, it goes to whichever full node holding its prefix frees a slot first (their slots
        pool), after the requests already held for those nodes. Elsewhere: the cheapest node
        that can start it now (a free slot, or a cold load).
        """
        slots, full = view.cells["slots"][m], self.full[m]
        nodes = np.fromiter(cached, np.int64, len(cached)) if len(cached) > 1 \
            else np.empty(0, np.int64)  # one holder alone pools nothing
        pooled = nodes[full[nodes]]
        if not len(pooled):
            pooled = np.array([best])
        pool = int(slots[pooled].sum()) or 1
        _, service, _ = self._speeds(view.profiles.get(best, m), float(view.speed[best]) or 1.0)
        own = service / (slots.item(best) + 1)  # the wait est[best] holds already
        held = view.held_at(m)  # node -> requests held for it: look up the few pooled ones
        waiting = sum(held.get(node, 0) for node in pooled.tolist()) if held else 0
        ahead = waiting * service / pool
        hold = best_cost - own + service / (pool + 1) + ahead
        now = est  # the decision's own scratch: nothing reads it after this
        np.putmask(now, full, INF)
        other = int(now.argmin())
        if now.item(other) < hold:
            return other, False
        return best, True

    def _estimate(self, request: RouteRequest, candidates: Candidates, m: int,
                  out: np.ndarray) -> np.ndarray:
        """Expected TTFT per node, before prefix savings (into `out`)."""
        np.multiply(self.rate[m], request.prompt_tokens, out=out)
        out += self.base[m]
        if candidates.extra is not None:
            out[~candidates.mask] = INF
        return out

    def _cached_costs(self, request: RouteRequest, m: int, est: np.ndarray,
                      cached: dict[int, int], every: bool = False) -> list[tuple[int, float]]:
        """The cost of nodes holding part of the prompt, prefill savings taken off: of each of
        them, or (with many, unless `every`) of the cheapest only, all that can matter."""
        tokens = request.prompt_tokens
        if not cached or not tokens:
            return []
        per_block = tokens / len(request.prefix)
        rate = self.rate[m]
        if len(cached) <= 8 and not every:  # the usual few: scalars beat building arrays
            return [(node, est.item(node) - min(blocks * per_block, tokens) * rate.item(node))
                    for node, blocks in cached.items()]
        nodes = np.fromiter(cached.keys(), np.int64, len(cached))
        held = np.fromiter(cached.values(), np.float64, len(cached))
        costs = est[nodes] - np.minimum(held * per_block, tokens) * rate[nodes]
        if every:
            return list(zip(nodes.tolist(), costs.tolist(), strict=True))
        k = int(costs.argmin())
        return [(int(nodes[k]), float(costs[k]))]

    def _ranked(self, request: RouteRequest, candidates: Candidates,
                view: ClusterView) -> tuple[int, ...]:
        """Every finite-cost candidate, cheapest first, from the view as it is when asked."""
        m = candidates.model
        est = self._estimate(request, candidates, m, np.empty(view.capacity))
        cached = view.prefixes.matches(request.prefix) if request.prefix else {}
        for node, cost in self._cached_costs(request, m, est, cached, every=True):
            est[node] = cost
        order = np.argsort(est[: view.n], kind="stable")
        return tuple(int(i) for i in order if est[i] < INF)


def _grown(a: np.ndarray, capacity: int, fill: float) -> np.ndarray:
    out = np.full(capacity, fill)
    out[: len(a)] = a
    return out
