"""``sollol``: SOLLOL's INTELLIGENT routing: a multiplicative score per host, highest wins.

Source: SOLLOL `src/sollol/intelligence.py`, `IntelligentRouter._score_host_for_context`
and `select_optimal_node` (the version with `MIN_VRAM_THRESHOLD_MB` and the GPU-sized
exponential load penalty), fed by `pool.py` (`_init_node_metadata`: `latency_ms` 0.0,
`success_rate` 1.0, `cpu_load` 0.5, `priority` 999 until measured). Per host, starting at 100:

1. GPU (only when the task needs one): free VRAM 0 -> x0.2; under 1 GB -> x0.9, or x0.54
   with requests active; over 8 GB -> x2; over 4 GB -> x1.5; else x1. When every GPU host
   has under 1 GB free (or there is none) the task falls back to CPU instead: no GPU x1,
   under 1 GB x0.7, else x1.2.
2. CPU load against complexity (skipped for "overflow" hosts, free VRAM under 1 GB): complex
   tasks x0.3 above 0.8 load, x1.3 below 0.3; simple tasks x0.7 above 0.9.
3. x success rate; / (1 + latency penalty) (skipped for overflow hosts), the penalty being
   ``w x ms/1000`` under 200 ms, ``w x ms/100`` over 1 s, else ``w x min(ms/100, 10)``, with
   ``w = 1 + task priority / 10``.
4. With active requests a: / base^a and / (1 + 0.15 a); base 1.5 / 1.3 / 1.2 / 1.15 for
   free VRAM under 1 / 4 / 8 GB / above, then x0.8 (at least 1.05) when the host's latency
   is under 1 s, x1.3 (at most 2.0) over 5 s. (NOTES and the brief give "base 1.15-1.5" and
   "use 1.3": this is where those numbers come from.)
5. / (1 + 3 x cpu load) for task priority >= 7, else / (1 + 1.5 x cpu load).
6. Model already loaded (SOLLOL's name match: same name, or the part before ':' contained
   in a loaded name) x1.5; else x0.95 if other models are loaded.
7. Host priority 0: x1.5 for task priority >= 7, else x1.2. 8. Estimated duration over 5 s
   (3 ms a token for generation, 0.5 for embeddings) on a host over 0.6 load: x0.7.
Highest score wins; Python's stable sort keeps host order among equals (node number here).

Mapping to the view (SOLLOL's inputs we do not have, and what stands in for them):
- free VRAM (MB) = `view.mem_free` / 2**20; active requests = `view.in_flight`;
- success rate = 1 - profile.error_rate (an EWMA; SOLLOL's is cumulative);
- latency = profile.ttft in ms, 0 without a profile (SOLLOL's starting value). SOLLOL
  measures the whole request, so with TTFT the latency terms are gentler than SOLLOL's;
- cpu load = in flight / slots of the model on the node, at most 1 (SOLLOL reads a host
  load figure; the node's concurrency is the nearest thing a gateway sees);
- task: "embedding" for the embed endpoints, else "generation"; complexity from the prompt
  tokens (< 500 simple, < 2000 medium) since we route before reading message text; task
  priority interactive -> 10 (URGENT), default -> 5 (NORMAL), batch -> 2 (LOW);
- host priority 0 = the node label ``priority=0``; SOLLOL's preferred task types and CPU
  core count bonus have no input here and stay neutral (x1), as for a host without them.
Fallbacks: by score, equal scores in node order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ollamamax.scheduler.decide import Candidates
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.strategies._ordering import as_tuple
from ollamamax.scheduler.strategies._profile_columns import ProfileColumns
from ollamamax.scheduler.view import ClusterView

MIN_VRAM_MB = 1000.0  # SOLLOL_MIN_VRAM_MB default
MB = 2**20
PREFERRED_LABEL = "priority=0"
TASK_PRIORITY = (10, 5, 2)  # by our priority class: URGENT, NORMAL, LOW
MS_PER_TOKEN = {"embedding": 0.5, "generation": 3.0}
EMBED_ENDPOINTS = frozenset({"embed", "embeddings"})


@dataclass(frozen=True, slots=True)
class TaskContext:
    task_type: str
    complexity: str
    priority: int
    requires_gpu: bool
    duration_ms: float


def task_context(request: RouteRequest) -> TaskContext:
    task = "embedding" if request.endpoint in EMBED_ENDPOINTS else "generation"
    tokens = request.prompt_tokens
    complexity = "simple" if tokens < 500 else "medium" if tokens < 2000 else "complex"
    requires_gpu = task == "embedding" or complexity != "simple"
    priority = TASK_PRIORITY[min(max(request.priority, 0), len(TASK_PRIORITY) - 1)]
    return TaskContext(task, complexity, priority, requires_gpu, tokens * MS_PER_TOKEN[task])


@dataclass(frozen=True, slots=True)
class Hosts:
    """SOLLOL's host metadata, one array element per candidate."""

    gpu_mb: np.ndarray
    active: np.ndarray
    cpu_load: np.ndarray
    success: np.ndarray
    latency_ms: np.ndarray
    loaded: np.ndarray
    other_loaded: np.ndarray
    preferred: np.ndarray


def score_hosts(h: Hosts, ctx: TaskContext) -> np.ndarray:
    """`_score_host_for_context` over every candidate at once."""
    overflow = h.gpu_mb < MIN_VRAM_MB
    score = gpu_factor(h.gpu_mb, h.active, ctx.requires_gpu) * 100.0
    score *= np.where(overflow, 1.0, cpu_factor(h.cpu_load, ctx.complexity))
    score *= h.success
    score /= np.where(overflow, 1.0, 1.0 + latency_penalty(h.latency_ms, ctx.priority))
    score /= active_divisor(h.gpu_mb, h.active, h.latency_ms)
    score /= 1.0 + h.cpu_load * (3.0 if ctx.priority >= 7 else 1.5)
    score *= np.where(h.loaded, 1.5, np.where(h.other_loaded, 0.95, 1.0))
    if h.preferred.any():
        score *= np.where(h.preferred, 1.5 if ctx.priority >= 7 else 1.2, 1.0)
    if ctx.duration_ms > 5000:
        score *= np.where(h.cpu_load > 0.6, 0.7, 1.0)
    return score


def gpu_factor(gpu: np.ndarray, active: np.ndarray, requires_gpu: bool) -> np.ndarray:
    if not requires_gpu:
        return np.ones(len(gpu))
    low = gpu < MIN_VRAM_MB
    none = gpu == 0
    if bool((low | none).all()):  # every GPU overwhelmed, or none: CPU fallback
        return np.where(none, 1.0, np.where(low, 0.7, 1.2))
    factor = np.where(gpu > 8000, 2.0, np.where(gpu > 4000, 1.5, 1.0))
    factor = np.where(low, np.where(active == 0, 0.9, 0.9 * 0.6), factor)
    return np.where(none, 0.2, factor)


def cpu_factor(cpu: np.ndarray, complexity: str) -> np.ndarray | float:
    if complexity == "complex":
        return np.where(cpu > 0.8, 0.3, np.where(cpu < 0.3, 1.3, 1.0))
    if complexity == "simple":
        return np.where(cpu > 0.9, 0.7, 1.0)
    return 1.0


def latency_penalty(ms: np.ndarray, priority: int) -> np.ndarray:
    weight = 1.0 + priority / 10.0
    per = np.where(ms < 200, ms / 1000.0, np.where(ms > 1000, ms / 100.0,
                                                  np.minimum(ms / 100.0, 10.0)))
    return per * weight


def active_divisor(gpu: np.ndarray, active: np.ndarray, latency_ms: np.ndarray) -> np.ndarray:
    base = np.where(gpu < MIN_VRAM_MB, 1.5,
                    np.where(gpu < 4000, 1.3, np.where(gpu < 8000, 1.2, 1.15)))
    base = np.where(latency_ms < 1000, np.maximum(1.05, base * 0.8),
                    np.where(latency_ms > 5000, np.minimum(2.0, base * 1.3), base))
    # base ** active, as exp(active x log base): an array power costs ten times more
    return np.exp(active * np.log(base)) * (1.0 + 0.15 * active)


def sollol_aliases(names: list[str], m: int) -> list[int]:
    """Models SOLLOL would count as `names[m]` being loaded (its substring name match)."""
    wanted = names[m]
    base = wanted.split(":")[0]
    return [k for k, name in enumerate(names) if name == wanted or base in name]


class LoadedCounts:
    """How many models each node has loaded, kept current through the view's listeners."""

    def __init__(self) -> None:
        self.view: ClusterView | None = None
        self.count = np.zeros(0, np.int32)

    def bind(self, view: ClusterView) -> None:
        self.view = view
        self.count = np.zeros(view.capacity, np.int32)
        for loaded in view.loaded:
            self.count += loaded
        view.subscribe(self)

    def cell_changed(self, view: ClusterView, node: int, model: int) -> None:
        if view is self.view:
            self.count[node] = sum(int(loaded[node]) for loaded in view.loaded)

    def node_changed(self, view: ClusterView, node: int) -> None:
        """Loading is per cell."""

    def model_added(self, view: ClusterView, model: int) -> None:
        """A new model is loaded nowhere yet."""

    def resized(self, view: ClusterView) -> None:
        if view is self.view:
            grown = np.zeros(view.capacity, np.int32)
            grown[: len(self.count)] = self.count
            self.count = grown


class Sollol:
    name = "sollol"

    def __init__(self, seed: int = 0) -> None:
        del seed  # deterministic
        self.view: ClusterView | None = None
        self.columns = ProfileColumns(success=(1.0, lambda p: 1.0 - p.error_rate),
                                      latency_ms=(0.0, lambda p: p.ttft * 1000.0))
        self.loaded_counts = LoadedCounts()
        self._aliases: dict[int, list[int]] = {}
        self._aliases_for = 0  # how many models the aliases were computed with

    def bind(self, view: ClusterView) -> None:
        self.view = view
        self.columns.bind(view)
        self.loaded_counts.bind(view)

    def hosts(self, view: ClusterView, m: int, idx: np.ndarray) -> Hosts:
        active = view.in_flight[idx].astype(np.float64)
        slots = np.maximum(view.slots[m][idx], 1)
        loaded = np.zeros(len(idx), np.bool_)
        for k in self._alias(view, m):
            loaded |= view.loaded[k][idx]
        preferred = view.label_index.get(PREFERRED_LABEL)
        return Hosts(
            gpu_mb=view.mem_free[idx] / MB,
            active=active,
            cpu_load=np.minimum(active / slots, 1.0),
            success=self.columns.get("success", m)[idx],
            latency_ms=self.columns.get("latency_ms", m)[idx],
            loaded=loaded,
            other_loaded=self.loaded_counts.count[idx] > 0,
            preferred=np.zeros(len(idx), np.bool_) if preferred is None else preferred[idx],
        )

    def choose(self, request: RouteRequest, candidates: Candidates, view: ClusterView,
               now: float) -> Decision:
        if self.view is not view:
            self.bind(view)
        idx = candidates.indices
        score = score_hosts(self.hosts(view, candidates.model, idx), task_context(request))
        best = int(score.argmax())  # the first of equals, as a stable descending sort
        return Decision(int(idx[best]),
                        lambda: as_tuple(idx[np.argsort(-score, kind="stable")]),
                        f"score {score[best]:.1f}")

    def _alias(self, view: ClusterView, m: int) -> list[int]:
        if self._aliases_for != len(view.model_names):
            self._aliases, self._aliases_for = {}, len(view.model_names)
        if m not in self._aliases:
            self._aliases[m] = sollol_aliases(view.model_names, m)
        return self._aliases[m]
