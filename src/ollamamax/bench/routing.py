"""``ollamamax bench routing``: every strategy on every workload, in the cluster simulator.

The matrix runs the shipped scheduler (`ollamamax.sim` drives the gateway's own router) on
16 nodes at 80% of their estimated capacity, with fixed seeds, so two runs of the same code
give the same table. Nodes are GPU servers as Ollama runs them there: the `gpu-8b` timing
profile, 4 slots per loaded model (OLLAMA_NUM_PARALLEL=4), 8,192 tokens of context per slot,
3 models resident at most. The first `WARMUP_S` virtual seconds are served but not counted:
a cluster's first cold loads are not its steady state. The Mooncake trace is replayed at its
own pace from ``../shared/traces`` (or ``--trace``); without it, that row is skipped with a
message.

The goals it checks for ``intelligent`` (issue 3): TTFT p99 at least 1.5x better than the
best other strategy on shared-prefix, multi-turn and zipf-models; within 5% of the best on
low-sharing; cold loads at most 1% of requests on zipf-models; no node above 1.25x the mean
load on the Mooncake trace.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ollamamax.sim import cluster, run, workloads

NODES = 16
LOAD = 0.8
REQUESTS = 6000
WARMUP_S = 120.0
CONFIG = cluster.ClusterConfig(nodes=NODES, profiles=(("gpu-8b", 1),), slots=4, num_ctx=8192,
                               warmup_s=WARMUP_S, seed=0)
GENERATED = ("shared-prefix", "multi-turn", "zipf-models", "low-sharing")
TRACE_NAME = "mooncake_conversation_trace.jsonl"
OURS = "intelligent"


def default_trace() -> Path | None:
    """The shared Mooncake trace, looked for beside the checkout and the working directory."""
    repo = Path(__file__).resolve().parents[3]
    for base in (repo, Path.cwd()):
        candidate = base.parent / "shared" / "traces" / TRACE_NAME
        if candidate.is_file():
            return candidate
    return None


def run_matrix(strategies: list[str], trace: Path | None, requests: int = REQUESTS,
               progress: Callable[[str], None] = print) -> dict[str, Any]:
    reports = []
    for name in GENERATED:
        options = workloads.WorkloadOptions(name=name, requests=requests, load=LOAD, seed=0)
        reports.append(_run(options, strategies, progress))
    if trace is None:
        progress(f"no Mooncake trace found ({TRACE_NAME} in ../shared/traces or --trace): "
                 "skipping the trace row")
    else:
        options = workloads.WorkloadOptions(name="trace", trace=str(trace), seed=0)
        reports.append(_run(options, strategies, progress))
    return {"config": _config(requests), "workloads": reports, "goals": goals(reports)}


def _run(options: workloads.WorkloadOptions, strategies: list[str],
         progress: Callable[[str], None]) -> dict[str, Any]:
    wl = workloads.build(options, lambda p, o: cluster.capacity(CONFIG, p, o))
    config = dataclasses.replace(CONFIG, **{key: getattr(wl, key) for key in
                                            ("max_loaded", "keep_alive", "num_ctx")
                                            if getattr(wl, key) is not None})
    progress(f"{wl.name}: {len(wl.requests)} requests at {wl.rate:.3g}/s")
    report = run.run(wl, config, strategies)
    report["rate_rps"] = round(wl.rate, 4)
    return report


def _config(requests: int) -> dict[str, Any]:
    return {"nodes": NODES, "load": LOAD, "requests": requests, "warmup_s": WARMUP_S,
            "profile": "gpu-8b", "slots": CONFIG.slots, "num_ctx": CONFIG.num_ctx,
            "max_loaded": CONFIG.max_loaded, "seed": CONFIG.seed}


def goals(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each of issue 3's routing goals for `intelligent`, with the figures behind it."""
    by = {r["workload"]: {x["strategy"]: x for x in r["results"]} for r in reports}
    out = []
    for name in ("shared-prefix", "multi-turn", "zipf-models"):
        if OURS in by.get(name, {}) and len(by[name]) > 1:  # a comparison needs another
            ours, best, who = _best_other(by[name], "ttft_p99_s")
            ratio = best / ours if ours > 0 else float("inf")
            out.append({"goal": f"{name}: TTFT p99 >= 1.5x better than the best other",
                        "ours": ours, "best_other": best, "best_other_strategy": who,
                        "ratio": round(ratio, 3), "met": ratio >= 1.5})
    if OURS in by.get("low-sharing", {}) and len(by["low-sharing"]) > 1:
        ours, best, who = _best_other(by["low-sharing"], "ttft_p99_s")
        out.append({"goal": "low-sharing: TTFT p99 within 5% of the best", "ours": ours,
                    "best_other": best, "best_other_strategy": who,
                    "ratio": round(ours / best, 3) if best else None,
                    "met": ours <= best * 1.05})
    if OURS in by.get("zipf-models", {}):
        r = by["zipf-models"][OURS]
        share = r["cold_loads"] / max(1, r["requests"])
        out.append({"goal": "zipf-models: cold loads <= 1% of requests",
                    "ours": r["cold_loads"], "requests": r["requests"],
                    "share": round(share, 4), "met": share <= 0.01})
    if OURS in by.get("trace", {}):
        r = by["trace"][OURS]
        out.append({"goal": "Mooncake trace: no node above 1.25x the mean load",
                    "ours": r["max_over_mean_load"], "met": r["max_over_mean_load"] <= 1.25})
    return out


def _best_other(results: dict[str, dict[str, Any]], key: str) -> tuple[float, float, str]:
    others = {name: r[key] for name, r in results.items() if name != OURS}
    who = min(others, key=others.__getitem__)
    return results[OURS][key], others[who], who


def markdown(report: dict[str, Any]) -> str:
    """The tables and goals as docs/routing.md shows them: strategies by TTFT p99, ours first."""
    lines = []
    for w in report["workloads"]:
        measured = max(r["requests"] for r in w["results"])
        lines += [f"**{w['workload']}** ({measured} requests measured, {w['rate_rps']} req/s)", "",
                  "| strategy | TTFT p50 s | p90 | p99 | E2E p99 | prefix hit | cold loads "
                  "| max/mean | failed |",
                  "| :-- | --: | --: | --: | --: | --: | --: | --: | --: |"]
        rows = sorted(w["results"], key=lambda r: (r["strategy"] != OURS, r["ttft_p99_s"]))
        for r in rows:
            name = f"**{r['strategy']}**" if r["strategy"] == OURS else r["strategy"]
            lines.append(f"| {name} | {r['ttft_p50_s']:.3f} | {r['ttft_p90_s']:.3f} "
                         f"| {r['ttft_p99_s']:.3f} | {r['e2e_p99_s']:.3f} "
                         f"| {r['prefix_hit_rate']:.1%} | {r['cold_loads']} "
                         f"| {r['max_over_mean_load']:.2f} | {r['failed']} |")
        lines.append("")
    lines += ["Goals:", ""]
    for goal in report["goals"]:
        figures = ", ".join(f"{k} {v}" for k, v in goal.items() if k not in ("goal", "met"))
        lines.append(f"- {goal['goal']}: **{'met' if goal['met'] else 'missed'}** ({figures})")
    return "\n".join(lines) + "\n"


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")
