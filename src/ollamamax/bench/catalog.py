"""``ollamamax bench catalog``: the optimisation catalogue's table, measured on OllamaMax's code.

Every pair (`variants.PAIRS`) runs both variants on the same generated inputs: "before" is the
catalogue's baseline of each pair, "after" the variant OllamaMax ships (each flag's default).
The six rows of the catalogue's results table, defined precisely in docs/benchmarks.md:

- task_scheduling_time: enqueue + decide + dispatch of one request, 10,000 requests waiting in
  the admission queue, 1,000 nodes (strategy `intelligent`, requests as the gateway makes them:
  no label constraints unless `labelled`); mean per request, the median of 5 rounds;
- lb_selection_time: one `Scheduler.decide` at 1,000 nodes, same requests;
- model_sync_duration: version comparison + conflict detection + resolution (build the index,
  then `diff()`) over a catalogue of 100 nodes x 40 models (60 names, 5% conflicting copies);
- scheduler_memory: tracemalloc, the scheduler's state at 1,000 nodes and 10,000 waiting
  (view, profiles, a full task history, prefix index, strategy arrays, queue, requests);
- cpu_peak: the share of one core needed to sustain the catalogue's 380 scheduling
  operations per second: 380 x CPU seconds of one router cycle (the slowest of 5 rounds);
- throughput: router cycles per second on one core, a cycle being `Router.arrive` (decide,
  dispatch) then `Router.finished` (profile, view, history), 1,000 nodes.

The complexity rows fit the exponent k of time ~ n^k by least squares on log-log axes for
n = 100 ... 100,000 (baselines that are quadratic, and builds that take minutes, stop
earlier: see `SIZES`). Timings are wall clock, `perf_counter`, GC on.
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ollamamax import variants as v
from ollamamax.bench.decide import build as build_view
from ollamamax.models.versions import Version
from ollamamax.scheduler import ClusterView, RouteRequest, Scheduler
from ollamamax.scheduler.queue import AdmissionQueue, Waiting
from ollamamax.scheduler.router import Dispatch, Router

# the catalogue's own figures, in the row's unit
SEED = {
    "task_scheduling_time": ("us", 45_000.0, 16_000.0),
    "lb_selection_time": ("us", 25_000.0, 11_000.0),
    "model_sync_duration": ("ms", 2_300.0, 700.0),
    "scheduler_memory": ("MB", 250.0, 150.0),
    "cpu_peak": ("%", 85.0, 62.0),
    "throughput": ("ops/s", 150.0, 380.0),
}
CATALOGUE_RATE = 380.0  # the catalogue's "after" throughput: the load cpu_peak is taken at
GOALS = {"task_scheduling_time": ("<=", 160.0), "lb_selection_time": ("<=", 110.0),
         "scheduler_memory": ("<=", 50.0), "throughput": (">=", 50_000.0)}
EXPONENT_TOLERANCE = 0.2

BEFORE = {p.flag: p.baseline for p in v.PAIRS}
AFTER = {p.flag: p.default for p in v.PAIRS}
LABELS_REQUIRED = frozenset({"gpu=a100"})  # two of three nodes
LABELS_EXCLUDED = frozenset({"zone=3"})  # one of four nodes


@dataclass(frozen=True)
class Options:
    nodes: int = 1000
    waiting: int = 10_000
    history: int = 65_536  # rows of task history, full (the view's default capacity)
    labelled: bool = False  # requests carry 2 label constraints (the gateway's do not, yet)
    rounds: int = 5
    round_s: float = 0.2  # target duration of one timed round
    sync_nodes: int = 100
    sync_models: int = 40
    sync_names: int = 60
    sizes: tuple[int, ...] = (100, 1_000, 10_000, 100_000)
    caps: dict[str, int] = field(default_factory=lambda: dict(CAPS))

    @classmethod
    def quick(cls) -> Options:
        return cls(nodes=50, waiting=300, history=512, rounds=2, round_s=0.005, sync_nodes=10,
                   sync_models=10, sync_names=15, sizes=(100, 300),
                   caps={k: min(c, 1000) for k, c in CAPS.items()})


# Largest n per component and variant ("before"/"after") where the full range takes too long.
CAPS = {
    "node_selection/before": 10_000, "node_selection/after": 10_000,  # views take minutes
    "conflict_resolution/before": 10_000,  # quadratic
    "conflict_resolution_merkle/before": 10_000,
}


# -- timing ----------------------------------------------------------------------------------


def per_op(op: Callable[[], Any], rounds: int, round_s: float) -> float:
    """Seconds per call of `op`: calls in rounds of about `round_s`, the median round."""
    t0 = time.perf_counter()
    op()
    once = max(time.perf_counter() - t0, 1e-7)
    reps = max(1, min(100_000, int(round_s / once)))
    results = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            op()
        results.append((time.perf_counter() - t0) / reps)
    return float(np.median(results))


def exponent(sizes: list[int], seconds: list[float]) -> float:
    """k in time ~ n^k: least squares on log-log axes."""
    slope, _ = np.polyfit(np.log(sizes), np.log(seconds), 1)
    return round(float(slope), 3)


# -- the scheduler's world -------------------------------------------------------------------


@dataclass
class World:
    view: ClusterView
    requests: list[RouteRequest]
    scheduler: Scheduler
    router: Router
    queue: AdmissionQueue
    now: float = 1000.0
    k: int = 0

    def next_request(self) -> RouteRequest:
        self.k += 1
        return self.requests[self.k % len(self.requests)]


def build_world(nodes: int, waiting: int, chosen: dict[str, str], seed: int = 0,
                history: int = 65_536, labelled: bool = False) -> World:
    """A cluster of `nodes` (`bench decide`'s), labels, profiles, a full history, a queue."""
    rng = np.random.default_rng(seed)
    view, plain = build_view(nodes, seed)
    for k in range(view.n):
        view.add(view.ids[k], labels=("gpu=a100" if k % 3 else "gpu=t4", f"zone={k % 4}"))
    for i in range(view.n):  # what each node has shown so far
        for m in range(len(view.model_names)):
            if view.has[m][i]:
                view.profiles.record(i, m, ok=True, ttft=0.2, prompt_tokens=2048, prefill_s=0.5,
                                     output_tokens=200, decode_s=4.0, latency=0.2, duration=4.5)
    view.history = v.load(v.HISTORY, chosen[v.HISTORY])(history)
    for k in range(history):
        view.history.append(time=k * 0.01, node=k % view.n, model=k % 20, prompt_tokens=2048,
                            output_tokens=200, ttft=0.1 + (k % 97) / 100, duration=4.0)
    require, exclude = (LABELS_REQUIRED, LABELS_EXCLUDED) if labelled else ((frozenset(),) * 2)
    requests = [RouteRequest(r.model, prompt_tokens=r.prompt_tokens, prefix=r.prefix,
                             priority=int(rng.integers(0, 3)), require=require,
                             exclude=exclude) for r in plain]
    weights = v.load(v.WEIGHTS, chosen[v.WEIGHTS])(seed=1)
    scheduler = Scheduler(weights, label_mask=v.load(v.CONSTRAINTS, chosen[v.CONSTRAINTS]))
    scheduler.bind(view)
    queue = AdmissionQueue(max_waiting=10**9, max_per_key=10**9)
    router = Router(scheduler, view, queue)
    arrivals = np.sort(rng.uniform(0, 1000.0, waiting))
    for k, t in enumerate(arrivals):  # filled as a heap, then moved at once (a bulk sort)
        r = requests[k % len(requests)]
        queue.push(r, view.model_index[r.model], float(t))
    queue.set_order(chosen[v.QUEUE_ORDER])
    return World(view, requests, scheduler, router, queue)


def schedule_one(w: World) -> tuple[int, int]:
    """Enqueue one request, decide the best waiting one of its model, dispatch it."""
    r = w.next_request()
    w.now += 0.001
    m = w.view.model_index[r.model]
    w.queue.push(r, m, w.now)
    head = w.queue.peek(m)
    assert head is not None
    decision = w.scheduler.decide(head.request, w.view, w.now)
    w.queue.pop(m, w.now)
    w.view.started(decision.node, m)  # what Router does on dispatch
    if head.request.prefix:
        w.view.prefixes.record(decision.node, head.request.prefix)
    return decision.node, m


def timed_scheduling(w: World, opts: Options) -> float:
    """Mean microseconds of `schedule_one`, the finish of each dispatch left out."""
    samples = []
    clock = time.perf_counter_ns
    for _ in range(opts.rounds):
        gc.collect()
        spent, count, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < opts.round_s or count < 3:
            t0 = clock()
            node, m = schedule_one(w)
            spent += clock() - t0
            count += 1
            w.view.finished(node, m, ok=True)
        samples.append(spent / count / 1000)
    return float(np.median(samples))


def timed_decide(w: World, opts: Options) -> float:
    def op() -> None:
        w.scheduler.decide(w.next_request(), w.view, w.now)
    return per_op(op, opts.rounds, opts.round_s) * 1e6


def router_cycle(w: World) -> None:
    r = w.next_request()
    w.now += 0.001
    out = w.router.arrive(r, w.now)
    if isinstance(out, Dispatch):
        w.router.finished(out.decision.node, out.model, w.now, ok=True, ttft=0.2, duration=4.0,
                          prompt_tokens=2048, output_tokens=200, prefill_s=0.5, decode_s=4.0)
    else:
        w.queue.cancel(out)


def cycles(w: World, opts: Options) -> tuple[float, float]:
    """(cycles per second, CPU seconds per cycle in the slowest round), no requests waiting."""
    for m in w.queue.models():
        while w.queue.pop(m, w.now) is not None:
            pass
    rates, cpu = [], []
    for _ in range(opts.rounds):
        gc.collect()
        count, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - wall0 < opts.round_s or count < 3:
            router_cycle(w)
            count += 1
        wall, spent = time.perf_counter() - wall0, time.process_time() - cpu0
        rates.append(count / wall)
        cpu.append(spent / count)
    return float(np.median(rates)), max(cpu)


def scheduler_memory(opts: Options, chosen: dict[str, str]) -> float:
    """MB tracemalloc sees allocated by building the scheduler's world."""
    gc.collect()
    tracemalloc.start()
    try:
        world = build_world(opts.nodes, opts.waiting, chosen, history=opts.history,
                            labelled=opts.labelled)
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del world
    return current / 1e6


# -- model catalogues ------------------------------------------------------------------------


def catalogue(nodes: int, models: int, names: int, seed: int = 0,
              conflicts: float = 0.05) -> dict[str, dict[str, Version]]:
    """`nodes` nodes holding `models` of `names` models each; a share of copies conflict."""
    rng = np.random.default_rng(seed)
    pool = [f"library/model-{k}:{'latest' if k % 3 else 'q4_0'}" for k in range(names)]
    good = {name: Version(1.7e9 + k, f"{k:064x}") for k, name in enumerate(pool)}
    out = {}
    for n in range(nodes):
        held = rng.choice(names, min(models, names), replace=False)
        entries = {}
        for k in held:
            version = good[pool[k]]
            if rng.random() < conflicts:
                version = Version(version.modified + float(rng.integers(-5, 6)),
                                  f"{int(rng.integers(1 << 62)):064x}")
            entries[pool[k]] = version
        out[f"node-{n:05d}"] = entries
    return out


def sync_once(variant: str, cat: dict[str, dict[str, Version]]) -> int:
    index = v.load(v.VERSIONS, variant)(cat)
    return len(index.diff())


# -- the table -------------------------------------------------------------------------------


def rows(opts: Options, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    out = []
    measured: dict[str, dict[str, float]] = {}
    for side, chosen in (("before", BEFORE), ("after", AFTER)):
        progress(f"{side}: building {opts.nodes} nodes with {opts.waiting} requests waiting")
        w = build_world(opts.nodes, opts.waiting, chosen, history=opts.history,
                        labelled=opts.labelled)
        m = measured[side] = {}
        m["task_scheduling_time"] = timed_scheduling(w, opts)
        m["lb_selection_time"] = timed_decide(w, opts)
        rate, cpu = cycles(w, opts)
        m["throughput"] = rate
        m["cpu_peak"] = CATALOGUE_RATE * cpu * 100
        del w
        cat = catalogue(opts.sync_nodes, opts.sync_models, opts.sync_names)
        m["model_sync_duration"] = per_op(lambda cat=cat, s=chosen[v.VERSIONS]: sync_once(s, cat),
                                          opts.rounds, opts.round_s) * 1e3
        m["scheduler_memory"] = scheduler_memory(opts, chosen)
        progress(f"{side}: " + ", ".join(f"{k} {val:.4g}" for k, val in m.items()))
    for metric, (unit, seed_before, seed_after) in SEED.items():
        out.append({"metric": metric, "unit": unit,
                    "before": _round(measured["before"][metric]),
                    "after": _round(measured["after"][metric]),
                    "seed_before": seed_before, "seed_after": seed_after})
    return out


def _round(x: float) -> float:
    return float(f"{x:.4g}")


# -- complexity ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    name: str
    claimed_before: str
    claimed_after: str
    before: str  # variant names, per `flag`
    after: str
    op: Callable[[str, int], Callable[[], Any]]  # (variant, n) -> one operation at size n


def _queue_op(variant: str, n: int) -> Callable[[], Any]:
    rng = np.random.default_rng(n)
    tags = rng.uniform(0, 1000.0, n)
    order = v.load(v.QUEUE_ORDER, variant)(
        Waiting(float(t), k, None) for k, t in enumerate(tags))
    seq = iter(range(n, 1 << 62))
    draws = itertools.cycle(rng.uniform(0, 1000.0, 1 << 16).tolist())

    def op() -> None:
        order.push(Waiting(next(draws), next(seq), None))
        order.first()
        order.pop()
    return op


def _labels_op(variant: str, n: int) -> Callable[[], Any]:
    view = ClusterView(n)
    for k in range(n):
        view.add(f"n{k}", labels=("gpu=a100" if k % 3 else "gpu=t4", f"zone={k % 4}"))
    mask = v.load(v.CONSTRAINTS, variant)
    return lambda: mask(view, LABELS_REQUIRED, LABELS_EXCLUDED)


_SELECTION_VIEWS: dict[int, tuple[ClusterView, list[RouteRequest]]] = {}


def _selection_op(variant: str, n: int) -> Callable[[], Any]:
    if n not in _SELECTION_VIEWS:  # both variants decide on the same view
        _SELECTION_VIEWS[n] = build_view(n)
    view, requests = _SELECTION_VIEWS[n]
    scheduler = Scheduler(v.load(v.WEIGHTS, variant)(seed=1))
    scheduler.bind(view)
    it = iter(range(1 << 62))
    return lambda: scheduler.decide(requests[next(it) % len(requests)], view, 0.0)


def _catalogue_for(n: int) -> dict[str, dict[str, Version]]:
    per_node = max(1, n // 10)
    return catalogue(10, per_node, max(per_node + 1, per_node * 5 // 4), seed=n)


def _sync_op(variant: str, n: int) -> Callable[[], Any]:
    cat = _catalogue_for(n)
    return lambda: sync_once(variant, cat)


def _lookup_op(variant: str, n: int) -> Callable[[], Any]:
    cat = {"node-a": {f"library/model-{k}:latest": Version(float(k), f"{k:064x}")
                      for k in range(n)}}
    index = v.load(v.VERSIONS, variant)(cat)
    names = list(cat["node-a"])
    rng = itertools.cycle(np.random.default_rng(n).integers(0, n, 1 << 16).tolist())
    return lambda: index.version("node-a", names[next(rng)])


def _history_append_op(variant: str, n: int) -> Callable[[], Any]:
    history = v.load(v.HISTORY, variant)(n)
    for k in range(n):
        history.append(time=float(k), node=k % 100, model=k % 20, ttft=0.1 + (k % 97) / 100)
    it = iter(range(n, 1 << 62))
    return lambda: history.append(time=float(next(it)), node=1, model=2, ttft=0.5)


def _history_query_op(variant: str, n: int) -> Callable[[], Any]:
    history = v.load(v.HISTORY, variant)(n)
    for k in range(n):
        history.append(time=float(k), node=k % 100, model=k % 20, ttft=0.1 + (k % 97) / 100)
    return lambda: history.percentiles("ttft", node=7)


def _variance_op(variant: str, n: int) -> Callable[[], Any]:
    """Read the variance of n values (a new value costs O(1) in both: an append, or
    Welford's update; adding one per call here would grow n while it is measured)."""
    stats = v.load(v.VARIANCE, variant)()
    for x in np.random.default_rng(n).normal(1.0, 0.2, n).tolist():
        stats.add(x)
    return lambda: stats.variance


def _peers_op(variant: str, n: int) -> Callable[[], Any]:
    table = v.load(v.HOLDERS, variant)()
    table.load({f"peer-{p:06d}": [f"sha256-{(p * 7 + b) % (n + 10):08x}" for b in range(10)]
                for p in range(n)})
    it = iter(range(1 << 62))
    return lambda: table.holders(f"sha256-{next(it) % (n + 10):08x}")


def _bandwidth_op(variant: str, n: int) -> Callable[[], Any]:
    window = v.load(v.BANDWIDTH, variant)(10.0, 10)
    clock = [0.0]
    step = 9.0 / n  # n transfers fill 9 of the window's 10 seconds
    for _ in range(n):
        clock[0] += step
        window.record("peer", 65536, clock[0])

    def op() -> int:
        clock[0] += step
        window.record("peer", 65536, clock[0])
        return int(window.bytes("peer", clock[0]))
    return op


def _buffers_op(variant: str, n: int) -> Callable[[], Any]:
    pool = v.load(v.BUFFERS, variant)(n)

    def op() -> None:
        buf = pool.acquire()
        buf[0] = 1  # touch it, as a reader would
        pool.release(buf)
    return op


COMPONENTS = (
    Component("task_queue", "O(n²)", "O(log n)", "sorted_list", "heap", _queue_op),
    Component("constraint_checking", "O(m×n)", "O(1) avg", "nested_loop", "index",  # noqa: RUF001
              _labels_op),
    Component("node_selection", "O(n²)", "O(n log n)", "recompute", "cached", _selection_op),
    Component("conflict_resolution", "O(n³)", "O(n log n)", "linear", "indexed", _sync_op),
    Component("conflict_resolution_merkle", "O(n³)", "O(n log n)", "linear", "merkle", _sync_op),
    Component("version_comparisons", "O(n²)", "O(log n)", "linear", "indexed", _lookup_op),
    Component("version_comparisons_trie", "O(n²)", "O(log n)", "linear", "merkle", _lookup_op),
    Component("task_history_append", "O(n)", "O(log n)", "list", "ring", _history_append_op),
    Component("task_history_percentile", "O(n)", "not stated", "list", "ring",
              _history_query_op),
    Component("variance", "not stated (double loops)", "not stated (single pass)", "two_pass",
              "welford", _variance_op),
    Component("peer_lookup", "O(n) (linear peer search)", "O(log n) (DHT)", "linear",
              "indexed", _peers_op),
    Component("bandwidth_window", "not stated", "not stated", "list", "ring", _bandwidth_op),
    Component("buffers", "not stated", "not stated", "fresh", "pool", _buffers_op),
)


def complexity(opts: Options, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    out = []
    for c in COMPONENTS:
        fitted = {}
        for side, variant in (("before", c.before), ("after", c.after)):
            cap = opts.caps.get(f"{c.name}/{side}", max(opts.sizes))
            sizes = [n for n in opts.sizes if n <= cap]
            seconds = []
            gc.collect()
            for n in sizes:
                seconds.append(per_op(c.op(variant, n), 3, opts.round_s / 2))
            fitted[side] = exponent(sizes, seconds)
            progress(f"{c.name} {side} ({variant}): " + ", ".join(
                f"n={n} {s * 1e6:.3g} us" for n, s in zip(sizes, seconds, strict=True))
                + f" -> n^{fitted[side]}")
        _SELECTION_VIEWS.clear()
        out.append({"component": c.name, "before_exponent": fitted["before"],
                    "after_exponent": fitted["after"], "claimed_before": c.claimed_before,
                    "claimed_after": c.claimed_after})
    return out


# -- report ----------------------------------------------------------------------------------


def run(opts: Options, progress: Callable[[str], None] = print) -> dict[str, Any]:
    return {"rows": rows(opts, progress), "complexity": complexity(opts, progress)}


def claimed_exponent(claim: str) -> float | None:
    """The exponent of n a claimed complexity means (log factors as 0), if it states one."""
    text = claim.replace(" avg", "").split(" (")[0].strip()
    return {"O(1)": 0.0, "O(log n)": 0.0, "O(n)": 1.0, "O(n log n)": 1.0,
            "O(m×n)": 1.0, "O(n²)": 2.0, "O(n³)": 3.0}.get(text)  # noqa: RUF001


def goals(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(goal, verdict, figures) for the issue's goals; verdict: met, missed, better than
    claimed (an exponent lower than the claim by more than the tolerance), or no claim."""
    out: list[tuple[str, str, str]] = []
    rows_by = {r["metric"]: r for r in report["rows"]}
    for metric, (op, limit) in GOALS.items():
        after = rows_by[metric]["after"]
        met = after <= limit if op == "<=" else after >= limit
        out.append((f"{metric} after {op} {limit:g} {rows_by[metric]['unit']}",
                    "met" if met else "missed", f"{after:g}"))
    decisions = 1e6 / rows_by["lb_selection_time"]["after"]  # decide alone, back to back
    out.append((f"decisions alone (1 / lb_selection_time) >= {GOALS['throughput'][1]:g}/s",
                "met" if decisions >= GOALS["throughput"][1] else "missed",
                f"{decisions:,.0f}/s"))
    for c in report["complexity"]:
        for side in ("after", "before"):
            claim = c[f"claimed_{side}"]
            want = claimed_exponent(claim)
            got = c[f"{side}_exponent"]
            if want is None:
                verdict = "no claim"
            elif math.isclose(got, want, abs_tol=EXPONENT_TOLERANCE):
                verdict = "met"
            else:
                verdict = "better than claimed" if got < want else "missed"
            out.append((f"{c['component']} {side}: n^{got} against {claim}", verdict,
                        "" if want is None else f"claimed n^{want:g}"))
    return out


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")
