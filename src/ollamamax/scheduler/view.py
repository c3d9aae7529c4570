"""The scheduler's picture of the cluster: arrays updated in place, never rebuilt per request.

Nodes are numbered 0..n-1 in the order they join; a node that leaves keeps its number (its row
is marked absent) so arrays never shift under a strategy. Models are numbered as they are
first seen. Per node the view keeps health, draining, ejection (passive outlier detection,
`gateway.outliers`), requests in flight, reported queue,
memory and hardware speed; per (model, node) whether the node has the model, whether it is
loaded, its slots, how many requests this gateway has there (`busy`, exact and current), and
what other gateways add (`reported_busy` in slots, `queued` waiting), taken from telemetry
minus this gateway's own share when the report arrived, so a stale report never hides a slot
this gateway knows is free.

Everything changes through the methods below, which also keep running counts (routable
holders per model) and tell registered listeners which cells changed, so derived indexes
(a strategy's cost arrays) stay current in O(1) per change. Within one decision the arrays
do not change: the event loop (or the simulator) applies changes between decisions.

The view also carries what the cluster taught the gateway: the prefix index, the performance
profiles and the task history, so every strategy reads everything from one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ollamamax.scheduler.history import TaskHistory
from ollamamax.scheduler.prefix import PrefixIndex
from ollamamax.scheduler.profiles import PerformanceProfiles


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """One model resident on a node, as its telemetry reports it."""

    model: str
    slots: int = 1
    busy: int = 0
    queued: int = 0
    size: int = 0


def _none_held(model: int) -> int:
    return 0


def _none_held_at(model: int) -> dict[int, int]:
    return {}


class ViewListener(Protocol):
    def node_changed(self, view: ClusterView, node: int) -> None:
        """Something node-wide changed (health, draining, queue, memory, membership)."""

    def cell_changed(self, view: ClusterView, node: int, model: int) -> None:
        """Something about `model` on `node` changed (has, loaded, slots, busy)."""

    def model_added(self, view: ClusterView, model: int) -> None:
        """A new model number exists (arrays for it were just created)."""

    def resized(self, view: ClusterView) -> None:
        """Node capacity grew: per-node arrays were reallocated."""


_NODE_ARRAYS: dict[str, Any] = {
    "present": np.bool_, "healthy": np.bool_, "draining": np.bool_, "ejected": np.bool_,
    "routable": np.bool_,
    "in_flight": np.int32, "served": np.int64, "queue_depth": np.int32,
    "mem_total": np.int64, "mem_free": np.int64, "speed": np.float64, "updated_at": np.float64,
    # the node's own limits (telemetry; Ollama's defaults until it reports them)
    "max_loaded": np.int32, "num_parallel": np.int32,
    # kept by the view: models resident on the node (or being loaded there for this gateway's
    # requests), and those of them with nothing running
    "resident": np.int32, "idle_models": np.int32,
}
_MODEL_ARRAYS: dict[str, Any] = {
    "has": np.bool_, "loaded": np.bool_, "slots": np.int32, "busy": np.int32,
    "reported_busy": np.int32, "queued": np.int32,
    "counted": np.bool_, "idle": np.bool_,  # what `resident`/`idle_models` count, per cell
}
DEFAULT_MAX_LOADED = 3  # OLLAMA_MAX_LOADED_MODELS
DEFAULT_NUM_PARALLEL = 1  # OLLAMA_NUM_PARALLEL


class ClusterView:
    present: np.ndarray
    healthy: np.ndarray
    draining: np.ndarray
    ejected: np.ndarray
    routable: np.ndarray
    in_flight: np.ndarray
    served: np.ndarray
    queue_depth: np.ndarray
    mem_total: np.ndarray
    mem_free: np.ndarray
    speed: np.ndarray
    updated_at: np.ndarray

    def __init__(self, capacity: int = 16, *, prefix_capacity: int = 4096,
                 history: int = 65536, profiles: int = 65536) -> None:
        self.capacity = max(1, capacity)
        self.n = 0
        self.ids: list[str] = []
        self.urls: list[str] = []
        self.labels: list[frozenset[str]] = []
        self.info: list[dict[str, Any]] = []  # the last telemetry document of each node
        self.last_error: list[str] = []
        self.index: dict[str, int] = {}
        for name, dtype in _NODE_ARRAYS.items():
            setattr(self, name, np.zeros(self.capacity, dtype))
        self.speed[:] = 1.0
        self.max_loaded[:] = DEFAULT_MAX_LOADED
        self.num_parallel[:] = DEFAULT_NUM_PARALLEL
        self.model_names: list[str] = []
        self.model_index: dict[str, int] = {}
        self.model_size: list[int] = []
        self.cells: dict[str, list[np.ndarray]] = {name: [] for name in _MODEL_ARRAYS}
        self.holders: list[int] = []  # nodes that have each model (present or not)
        self.routable_holders: list[int] = []
        self.label_index: dict[str, np.ndarray] = {}
        self.listeners: list[ViewListener] = []
        # requests this gateway holds per model, waiting for a slot (set by the router)
        self.held: Callable[[int], int] = _none_held
        self.held_at: Callable[[int], dict[int, int]] = _none_held_at  # model -> {node: n}
        self.prefixes = PrefixIndex(prefix_capacity)
        self.profiles = PerformanceProfiles(profiles)
        self.history = TaskHistory(history)

    # -- per-model arrays ------------------------------------------------------------------

    @property
    def has(self) -> list[np.ndarray]:
        return self.cells["has"]

    @property
    def loaded(self) -> list[np.ndarray]:
        return self.cells["loaded"]

    @property
    def slots(self) -> list[np.ndarray]:
        return self.cells["slots"]

    @property
    def busy(self) -> list[np.ndarray]:
        return self.cells["busy"]

    @property
    def reported_busy(self) -> list[np.ndarray]:
        return self.cells["reported_busy"]

    @property
    def queued(self) -> list[np.ndarray]:
        return self.cells["queued"]

    # -- membership ------------------------------------------------------------------------

    def add(self, node_id: str, url: str = "", *, labels: Iterable[str] | None = None,
            mem_total: int | None = None, speed: float | None = None) -> int:
        """Register a node (or refresh one already known: what is not given is kept)."""
        i = self.index.get(node_id)
        if i is None:
            i = self._append(node_id)
        self.urls[i] = url or self.urls[i]
        if labels is not None:
            self._set_labels(i, frozenset(labels))
        if mem_total is not None:
            self.mem_total[i] = mem_total
        if speed is not None:
            self.speed[i] = speed
        if not self.present[i]:
            self.present[i] = True
            self._update_routable(i)
        self._node_changed(i)
        return i

    def remove(self, node_id: str) -> None:
        """A node left: it keeps its number, but nothing routes to it any more."""
        i = self.index.get(node_id)
        if i is None or not self.present[i]:
            return
        self.present[i] = False
        self.healthy[i] = False
        self._update_routable(i)
        self._node_changed(i)

    def node(self, node_id: str) -> int:
        return self.index[node_id]

    def present_nodes(self) -> list[int]:
        return [i for i in range(self.n) if self.present[i]]

    # -- health and draining ---------------------------------------------------------------

    def set_health(self, i: int, healthy: bool, now: float, error: str = "") -> bool:
        """Record a health verdict; True when it changed."""
        changed = bool(self.healthy[i]) != healthy
        self.healthy[i] = healthy
        self.last_error[i] = error
        self.updated_at[i] = now
        if changed:
            self._update_routable(i)
            self._node_changed(i)
        return changed

    def set_draining(self, i: int, draining: bool) -> None:
        if bool(self.draining[i]) != draining:
            self.draining[i] = draining
            self._update_routable(i)
            self._node_changed(i)

    def set_ejected(self, i: int, ejected: bool) -> None:
        """Passive outlier detection took the node out of routing (or let it back)."""
        if bool(self.ejected[i]) != ejected:
            self.ejected[i] = ejected
            self._update_routable(i)
            self._node_changed(i)

    # -- telemetry -------------------------------------------------------------------------

    def update(self, i: int, *, models: Iterable[tuple[str, int]] = (),
               loaded: Iterable[LoadedModel] = (), queue_depth: int = 0,
               mem_free: int | None = None, mem_total: int | None = None,
               max_loaded: int | None = None, num_parallel: int | None = None,
               prefix_blocks: int | None = None, now: float = 0.0) -> None:
        """Apply one telemetry report: the models a node has and which are loaded.

        `prefix_blocks`: how many prompt blocks the node's caches hold, which bounds what the
        prefix index believes the node has (an older prompt is long evicted there).
        """
        self.updated_at[i] = now
        if prefix_blocks is not None:
            self.prefixes.set_capacity(i, prefix_blocks)
        node_wide = int(self.queue_depth[i]) != queue_depth
        self.queue_depth[i] = queue_depth
        for name, value in (("max_loaded", max_loaded), ("num_parallel", num_parallel)):
            array = getattr(self, name)
            if value is not None and value > 0 and int(array[i]) != value:
                array[i], node_wide = value, True
        if mem_free is not None and int(self.mem_free[i]) != mem_free:
            self.mem_free[i], node_wide = mem_free, True
        if mem_total is not None and int(self.mem_total[i]) != mem_total:
            self.mem_total[i], node_wide = mem_total, True
        has = {self.ensure_model(key, size) for key, size in models}
        resident = {self.ensure_model(lm.model, lm.size): lm for lm in loaded}
        has |= resident.keys()
        for m in range(len(self.model_names)):
            self._set_cell(i, m, m in has, resident.get(m))
        if node_wide:
            self._node_changed(i)

    def ensure_model(self, key: str, size: int = 0) -> int:
        m = self.model_index.get(key)
        if m is None:
            m = self.model_index[key] = len(self.model_names)
            self.model_names.append(key)
            self.model_size.append(size)
            self.holders.append(0)
            self.routable_holders.append(0)
            for name, dtype in _MODEL_ARRAYS.items():
                self.cells[name].append(np.zeros(self.capacity, dtype))
            for listener in self.listeners:
                listener.model_added(self, m)
        elif size and not self.model_size[m]:
            self.model_size[m] = size
        return m

    def model_id(self, key: str) -> int | None:
        return self.model_index.get(key)

    # -- outcomes --------------------------------------------------------------------------

    def started(self, i: int, m: int) -> None:
        """This gateway sent a request for model `m` to node `i`."""
        self.in_flight[i] += 1
        self.served[i] += 1
        self.cells["busy"][m][i] += 1
        self._cell_changed(i, m)

    def finished(self, i: int, m: int, ok: bool) -> None:
        """That request ended. A success means the node has the model loaded now."""
        self.in_flight[i] = max(0, int(self.in_flight[i]) - 1)
        busy = self.cells["busy"][m]
        busy[i] = max(0, int(busy[i]) - 1)
        if ok and not self.cells["loaded"][m][i]:
            self._mark_has(i, m, True)
            self.cells["loaded"][m][i] = True
            self.cells["slots"][m][i] = max(1, int(self.cells["slots"][m][i]))
        self._cell_changed(i, m)

    # -- queries ---------------------------------------------------------------------------

    def used_slots(self, i: int, m: int) -> int:
        """Requests on model `m` at node `i`: this gateway's, plus other gateways' last seen."""
        return int(self.cells["busy"][m][i]) + int(self.cells["reported_busy"][m][i])

    def free_slots(self, i: int, m: int) -> int:
        """Slots of model `m` on node `i` nobody is using, as far as this gateway knows."""
        if not self.cells["loaded"][m][i]:
            return 0
        return max(0, int(self.cells["slots"][m][i]) - self.used_slots(i, m))

    def label_mask(self, require: frozenset[str], exclude: frozenset[str]) -> np.ndarray | None:
        """Nodes that carry every required label and none of the excluded ones (None: all)."""
        if not require and not exclude:
            return None
        mask = np.ones(self.capacity, np.bool_)
        for label in require:
            mask &= self.label_index.get(label, np.zeros(self.capacity, np.bool_))
        for label in exclude:
            if label in self.label_index:
                mask &= ~self.label_index[label]
        return mask

    def subscribe(self, listener: ViewListener) -> None:
        self.listeners.append(listener)

    # -- internals -------------------------------------------------------------------------

    def _append(self, node_id: str) -> int:
        if self.n == self.capacity:
            self._grow(self.capacity * 2)
        i = self.n
        self.n += 1
        self.index[node_id] = i
        self.ids.append(node_id)
        self.urls.append("")
        self.labels.append(frozenset())
        self.info.append({})
        self.last_error.append("")
        return i

    def _grow(self, capacity: int) -> None:
        def grown(a: np.ndarray) -> np.ndarray:
            out = np.zeros(capacity, a.dtype)
            out[: len(a)] = a
            return out

        for name in _NODE_ARRAYS:
            setattr(self, name, grown(getattr(self, name)))
        self.speed[self.capacity:] = 1.0
        self.max_loaded[self.capacity:] = DEFAULT_MAX_LOADED
        self.num_parallel[self.capacity:] = DEFAULT_NUM_PARALLEL
        for arrays in self.cells.values():
            arrays[:] = [grown(a) for a in arrays]
        self.label_index = {k: grown(v) for k, v in self.label_index.items()}
        self.capacity = capacity
        for listener in self.listeners:
            listener.resized(self)

    def _set_labels(self, i: int, labels: frozenset[str]) -> None:
        for label in self.labels[i] - labels:
            self.label_index[label][i] = False
        for label in labels - self.labels[i]:
            self.label_index.setdefault(label, np.zeros(self.capacity, np.bool_))[i] = True
        self.labels[i] = labels

    def _update_routable(self, i: int) -> None:
        routable = bool(self.present[i] and self.healthy[i] and not self.draining[i]
                        and not self.ejected[i])
        if routable == bool(self.routable[i]):
            return
        self.routable[i] = routable
        delta = 1 if routable else -1
        for m, has in enumerate(self.cells["has"]):
            if has[i]:
                self.routable_holders[m] += delta

    def _mark_has(self, i: int, m: int, has: bool) -> None:
        cell = self.cells["has"][m]
        if bool(cell[i]) == has:
            return
        cell[i] = has
        delta = 1 if has else -1
        self.holders[m] += delta
        if self.routable[i]:
            self.routable_holders[m] += delta

    def _set_cell(self, i: int, m: int, has: bool, lm: LoadedModel | None) -> None:
        c = self.cells
        before = (bool(c["has"][m][i]), bool(c["loaded"][m][i]), int(c["slots"][m][i]),
                  int(c["reported_busy"][m][i]), int(c["queued"][m][i]))
        self._mark_has(i, m, has)
        c["loaded"][m][i] = lm is not None
        c["slots"][m][i] = lm.slots if lm is not None else 0
        own = int(c["busy"][m][i])
        own_running = min(own, lm.slots) if lm is not None else 0
        c["reported_busy"][m][i] = max(0, lm.busy - own_running) if lm is not None else 0
        c["queued"][m][i] = max(0, lm.queued - (own - own_running)) if lm is not None else 0
        after = (has, lm is not None, int(c["slots"][m][i]), int(c["reported_busy"][m][i]),
                 int(c["queued"][m][i]))
        if before != after:
            self._cell_changed(i, m)

    def _node_changed(self, i: int) -> None:
        for listener in self.listeners:
            listener.node_changed(self, i)

    def _cell_changed(self, i: int, m: int) -> None:
        c = self.cells
        loaded = bool(c["loaded"][m][i])
        # a model our requests wait for takes its place already (loading, or waiting for room),
        # though the node reports it only once loaded
        placed = loaded or int(c["busy"][m][i]) > 0
        if placed != bool(c["counted"][m][i]):
            c["counted"][m][i] = placed
            self.resident[i] += 1 if placed else -1
        idle = loaded and int(c["busy"][m][i]) + int(c["reported_busy"][m][i]) == 0
        if idle != bool(c["idle"][m][i]):
            c["idle"][m][i] = idle
            self.idle_models[i] += 1 if idle else -1
        for listener in self.listeners:
            listener.cell_changed(self, i, m)
