"""One workload against several strategies, same arrivals, a fresh cluster for each.

    report = run(workload, config, ["intelligent", "round_robin"])
    -> {"workload": str, "nodes": int, "results": [{"strategy": ..., "ttft_p50_s": ...}, ...]}

The keys of a result are the issue's (`RESULT_KEYS`); a few more follow them (`failovers`,
`failed_by`, `virtual_s`) to say why the figures are what they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from rich.table import Table

from ollamamax.scheduler import RouteRequest, strategies
from ollamamax.sim.cluster import ClusterConfig, Simulation, Tally, make_routes
from ollamamax.sim.workloads import Workload

RESULT_KEYS = ("strategy", "requests", "failed", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s",
               "e2e_p50_s", "e2e_p99_s", "throughput_rps", "output_tps", "prefix_hit_rate",
               "cold_loads", "max_over_mean_load")

Progress = Callable[[str, int, int], None]  # (strategy, requests settled, of how many)


def available_strategies() -> list[str]:
    """Registered strategies whose module exists (others are still being written)."""
    out = []
    for name in strategies.STRATEGIES:
        try:
            strategies.create(name)
        except (ImportError, AttributeError, SyntaxError):  # a module still being written
            continue
        out.append(name)
    return out


def run(workload: Workload, config: ClusterConfig, names: Sequence[str],
        progress: Progress | None = None, routes: list[RouteRequest] | None = None,
        ) -> dict[str, Any]:
    if routes is None:
        routes = make_routes(workload)  # the same requests for every strategy
    results = []
    total = len(workload.requests)
    for name in names:
        sim = Simulation(workload, config, name, routes)
        tick = (lambda done, name=name: progress(name, done, total)) if progress else None
        tally = sim.run(tick)
        results.append(summarise(name, sim, tally))
    return {"workload": workload.name, "nodes": config.nodes, "results": results}


def summarise(name: str, sim: Simulation, tally: Tally) -> dict[str, Any]:
    """The figures of one run, over requests that arrived after the warm-up."""
    warmup = sim.config.warmup_s
    arrivals = np.array([r.arrival for r in sim.workload.requests])
    measured = arrivals >= warmup
    done = measured & ~np.isnan(tally.ttft)
    ttft, e2e = tally.ttft[done], tally.e2e[done]
    start = float(arrivals[measured].min()) if measured.any() else 0.0
    span = tally.last_end - start
    served = np.bincount(tally.node[done], minlength=len(sim.nodes)).astype(float)
    prompt, cached = int(tally.prompt[done].sum()), int(tally.cached[done].sum())
    output = sum(r.output_tokens for r, ok in zip(sim.workload.requests, done, strict=True) if ok)
    return {
        "strategy": name,
        "requests": int(measured.sum()),
        "failed": int(measured.sum() - done.sum()),
        "ttft_p50_s": _pct(ttft, 50), "ttft_p90_s": _pct(ttft, 90), "ttft_p99_s": _pct(ttft, 99),
        "e2e_p50_s": _pct(e2e, 50), "e2e_p99_s": _pct(e2e, 99),
        "throughput_rps": _round(float(done.sum()) / span if span > 0 else 0.0),
        "output_tps": _round(output / span if span > 0 else 0.0),
        "prefix_hit_rate": _round(cached / prompt if prompt else 0.0),
        "cold_loads": sum(1 for node in sim.nodes for t in node.load_times if t >= warmup),
        "max_over_mean_load": _round(float(served.max() / served.mean()) if served.sum() else 0.0),
        **_prewarm_figures(sim),
        "failovers": tally.failovers,
        "failed_by": dict(sorted(tally.failed.items())),
        "warmup_s": float(warmup),
        "virtual_s": _round(sim.loop.now),
    }


def _prewarm_figures(sim: Simulation) -> dict[str, int]:
    """Loads the prewarmer asked for after the warm-up, and how they ended: used by a
    request, or wasted (gone unused, or still unused when the run ended)."""
    p = sim.prewarmer
    if p is None:
        return {}
    loads, used, wasted = (now - before for now, before in
                           zip((p.loads, p.used, p.wasted), sim.prewarm_before, strict=True))
    return {"prewarm_loads": loads, "prewarm_used": used,
            "prewarm_wasted": wasted + len(p.pending)}


def _pct(values: np.ndarray, q: float) -> float:
    return _round(float(np.percentile(values, q))) if values.size else math.nan


def _round(x: float) -> float:
    return round(x, 4) if math.isfinite(x) else x


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")


def table(report: dict[str, Any]) -> Table:
    t = Table(title=f"{report['workload']} on {report['nodes']} nodes")
    columns = [("strategy", "strategy"), ("ok", None), ("failed", "failed"),
               ("TTFT p50", "ttft_p50_s"), ("p90", "ttft_p90_s"), ("p99", "ttft_p99_s"),
               ("E2E p50", "e2e_p50_s"), ("p99", "e2e_p99_s"), ("req/s", "throughput_rps"),
               ("tok/s", "output_tps"), ("prefix hit", "prefix_hit_rate"),
               ("cold loads", "cold_loads"), ("max/mean", "max_over_mean_load")]
    if any("prewarm_loads" in r for r in report["results"]):
        columns += [("prewarm loads", "prewarm_loads"), ("used", "prewarm_used"),
                    ("wasted", "prewarm_wasted")]
    for title, _ in columns:
        t.add_column(title, justify="left" if title == "strategy" else "right")
    for r in report["results"]:
        cells = []
        for title, key in columns:
            value = r["requests"] - r["failed"] if key is None else r[key]
            cells.append(_cell(title, value))
        t.add_row(*cells)
    return t


def _cell(title: str, value: Any) -> str:
    if isinstance(value, str | int):
        return str(value)
    if math.isnan(value):
        return "-"
    if title == "prefix hit":
        return f"{value:.1%}"
    if title in ("req/s", "tok/s", "max/mean"):
        return f"{value:.2f}"
    return f"{value:.3f}"
