"""Predictive prewarming: load a model where demand is about to need it, before it comes.

Every `interval_s` the gateway (or the simulator) asks `plan` which models to load where:

- each model's demand `horizon_s` ahead comes from the `DemandForecast` (level and trend of
  its arrival rate);
- it needs ``ceil(rate x service x headroom / slots)`` resident copies to serve that demand
  without queueing (Little's law; service: the recent requests' mean time on a slot), none
  if it expects fewer than `min_requests` within `horizon_s`; fewer copies is a deficit;
- deficits are served highest marginal demand first (rate per copy after this one), at most
  `max_per_tick` loads a round, each on a node that has the model on disk, can hold it in
  memory and loads nothing else: a free place first (fewest requests in flight), else the node
  whose least wanted idle copy expects less than one request within the horizon and is wanted
  `margin` times less than this one (Ollama unloads an idle model to make room; a model that
  is serving is never evicted, since Ollama waits for it instead);
- a load is Ollama's own empty request with a keep-alive, so a copy nobody uses expires.

Each load is followed until it is settled: *used* when a request is sent to that node for
that model, *wasted* when the copy is gone (expired, evicted, or the load failed) unused.
Pure: the view and the time are arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ollamamax.scheduler.demand import DemandForecast
from ollamamax.scheduler.view import ClusterView

SERVICE_S = 2.0  # a request's time on a slot, until the history knows better (as `intelligent`)
SERVICE_WINDOW_S = 120.0  # the history it is measured over
DEAD_REQUESTS = 0.25  # a model expecting fewer requests within the horizon is not wanted


@dataclass(frozen=True, slots=True)
class Preload:
    node: int
    model: int


class Prewarmer:
    def __init__(self, forecast: DemandForecast | None = None, *, interval_s: float = 5.0,
                 horizon_s: float = 30.0, service_s: float = SERVICE_S, headroom: float = 1.25,
                 min_requests: float = 4.0, max_per_tick: int = 4, margin: float = 2.0,
                 spare: int = 1) -> None:
        # the forecast's resolution follows the planning interval (10 s buckets at 5 s)
        self.forecast = forecast or DemandForecast(bucket_s=2 * interval_s)
        self.interval_s = interval_s
        self.horizon_s = horizon_s
        self.service_s = service_s
        self.headroom = headroom
        self.min_requests = min_requests
        self.max_per_tick = max_per_tick
        self.margin = margin  # evict only for a model wanted this many times more
        self.spare = spare  # free places per node left for requests' own loads
        self.pending: dict[tuple[int, int], float] = {}  # (node, model) -> when it was asked
        self._used_at: dict[tuple[int, int], float] = {}  # (node, model) -> last request sent
        self.loads = 0
        self.used = 0
        self.wasted = 0

    # -- bookkeeping -------------------------------------------------------------------------

    def arrived(self, model: int, now: float) -> None:
        self.forecast.observe(model, now)

    def dispatched(self, node: int, model: int, now: float) -> None:
        """A request went to `node` for `model`: a prewarmed copy there was worth it."""
        if self.pending and self.pending.pop((node, model), None) is not None:
            self.used += 1
        self._used_at[(node, model)] = now

    def settle(self, view: ClusterView) -> None:
        """Count copies that are gone unused as wasted."""
        cells = view.cells
        for key in [key for key in self.pending
                    if not (cells["loaded"][key[1]][key[0]] or cells["busy"][key[1]][key[0]])]:
            del self.pending[key]
            self.wasted += 1

    # -- planning ----------------------------------------------------------------------------

    def plan(self, view: ClusterView, now: float) -> list[Preload]:
        """The loads to start now (the caller marks them started in the view and sends them)."""
        self.settle(view)
        n = view.n
        models = len(view.model_names)
        if not n or not models:
            return []
        cells = view.cells
        routable = view.routable[:n]
        rates = np.array([self.forecast.rate(m, now, self.horizon_s) for m in range(models)])
        placed = [(cells["loaded"][m][:n] | (cells["busy"][m][:n] > 0)) & routable
                  for m in range(models)]
        copies = np.array([int(p.sum()) for p in placed])
        slots = max(1.0, float(np.median(view.num_parallel[:n])))
        need = np.ceil(rates * self._service(view, now) * self.headroom / slots)
        # copies beyond the need (at least one while anyone wants the model) are surplus
        keep = np.where(rates * self.horizon_s < DEAD_REQUESTS, 0, np.maximum(need, 1))
        need[rates * self.horizon_s < self.min_requests] = 0  # too few to be worth a load
        short = np.flatnonzero(need > copies)
        if not len(short):
            return []
        # what a copy of each model is worth: its demand per copy (an idle one is a victim)
        worth = rates / np.maximum(copies, 1)
        victim = np.full(n, math.inf)
        loading = np.zeros(n, np.bool_)
        # a victim is an idle surplus copy (its model keeps what its own demand needs) that
        # nobody has used for the horizon: not one that bursts still call on
        surplus = copies > keep
        quiet = now - self.horizon_s
        for m in range(models):
            if surplus[m]:
                idle = cells["idle"][m][:n].copy()
                for node in np.flatnonzero(idle).tolist():
                    idle[node] = self._used_at.get((node, m), -math.inf) < quiet
                victim = np.where(idle & (worth[m] < victim), worth[m], victim)
            loading |= (cells["busy"][m][:n] > 0) & ~cells["loaded"][m][:n]
        # a node's last free place is left for a request's own load: filled ahead, it turns
        # the next cold load into an eviction (more loads in a cluster without spare places)
        free = view.resident[:n] < view.max_loaded[:n] - self.spare
        order = sorted(short.tolist(), key=lambda m: -rates[m] / (copies[m] + 1))
        out: list[Preload] = []
        for m in order:
            for extra in range(int(need[m] - copies[m])):
                if len(out) >= self.max_per_tick:
                    return out
                value = float(rates[m] / (copies[m] + extra + 1))
                node = self._pick(view, m, n, placed[m] | loading, free, victim, value)
                if node is None:
                    break
                out.append(Preload(node, m))
                loading[node] = True  # one load at a time per node
                self.pending[(node, m)] = now
                self.loads += 1
        return out

    def _service(self, view: ClusterView, now: float) -> float:
        """A request's time on a slot: the mean of the last minutes' requests, once there
        are enough of them."""
        recent = view.history.select("duration", since=now - SERVICE_WINDOW_S)
        return float(recent.mean()) if recent.size >= 20 else self.service_s

    def _pick(self, view: ClusterView, m: int, n: int, busy: np.ndarray, free: np.ndarray,
              victim: np.ndarray, value: float) -> int | None:
        able = view.cells["has"][m][:n] & view.routable[:n] & ~busy
        size = view.model_size[m]
        if size:
            total = view.mem_total[:n]
            able &= (total == 0) | (total >= size)
        spare = able & free
        if spare.any():
            idx = np.flatnonzero(spare)
            return int(idx[np.argmin(view.in_flight[:n][idx])])
        # an idle copy that expects less than a request within the horizon, and is wanted
        # `margin` times less than this one
        evictable = able & (victim * self.horizon_s < 1.0) & (victim * self.margin < value)
        if evictable.any():
            idx = np.flatnonzero(evictable)
            return int(idx[np.argmin(victim[idx])])
        return None
