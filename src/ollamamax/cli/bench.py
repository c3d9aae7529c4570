"""``ollamamax bench``: benchmarks whose figures go into docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="Measure OllamaMax.")
out = Console()
err = Console(stderr=True)


@app.command()
def gateway(
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results as JSON to this file.")] = None,
    requests: Annotated[int | None, typer.Option(
        min=1, help="Measured requests per case and side (default 4000, --quick 40).")] = None,
    concurrency: Annotated[str, typer.Option(
        help="Comma-separated concurrency levels.")] = "1,16,64",
    quick: Annotated[bool, typer.Option(help="A tiny smoke run of every case.")] = False,
) -> None:
    """The latency the gateway adds to a call to a node, and requests per second.

    A sim node answering instantly, a gateway in front of it, and a closed-loop load
    generator in this process; direct and gateway runs alternate. added_p99 is gateway p99
    minus direct p99.
    """
    from ollamamax.bench import gateway as bench

    levels = _levels(concurrency)
    options = bench.BenchOptions.quick(levels) if quick else bench.BenchOptions(concurrency=levels)
    if requests is not None:
        options = bench.BenchOptions(requests=requests, concurrency=levels,
                                     rounds=min(options.rounds, requests), warmup=options.warmup)
    # Plain lines, not a spinner: a spinner's refresh thread would compete with the load
    # generator for the GIL and add jitter to the latencies it measures.
    err.print("starting a sim node and a gateway")
    report = bench.run(options, progress=err.print)
    # Piped output has no width of its own: give the table room instead of rich's 80 columns.
    if not out.is_terminal:
        out.width = max(out.width, bench.TABLE_WIDTH)
    out.print(bench.table(report))
    for line in bench.summary(report):
        out.print(line)
    if json_file is not None:
        report.write_json(json_file)
        out.print(f"wrote {json_file}")
    if report.error_count:
        err.print(f"[bold red]{report.error_count} requests failed[/]: the figures above are "
                  "not a valid benchmark (see the errors column and the JSON)")
        raise typer.Exit(1)


@app.command()
def decide(
    nodes: Annotated[str, typer.Option(help="Comma-separated cluster sizes.")] = "1000,10000",
    strategy: Annotated[str, typer.Option(help="Comma-separated strategies (default all).")] = "",
    decisions: Annotated[int, typer.Option(min=10, help="Timed decisions per case.")] = 5000,
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results as JSON to this file.")] = None,
) -> None:
    """The time one routing decision takes, per strategy, at each cluster size."""
    from rich.table import Table

    from ollamamax.bench import decide as bench

    sizes = list(_levels(nodes))
    names = [s.strip() for s in strategy.split(",") if s.strip()] or bench.all_strategies()
    results = bench.run(sizes, names, decisions, progress=err.print)
    table = Table("strategy", "nodes", "p50 us", "p99 us", "mean us",
                  title="Scheduler.decide, one decision", box=None)
    for r in results:
        table.add_row(r.strategy, str(r.nodes), f"{r.p50_us:.1f}", f"{r.p99_us:.1f}",
                      f"{r.mean_us:.1f}")
    out.print(table)
    if json_file is not None:
        bench.write_json(results, json_file)
        out.print(f"wrote {json_file}")


@app.command()
def routing(
    strategy: Annotated[str, typer.Option(help="Comma-separated strategies (default all).")] = "",
    trace: Annotated[Path | None, typer.Option(
        help="The Mooncake trace (default: ../shared/traces/ beside the checkout).")] = None,
    requests: Annotated[int, typer.Option(min=100, help="Requests per generated workload.")
                        ] = 6000,
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results as JSON to this file.")] = None,
    markdown_file: Annotated[Path | None, typer.Option(
        "--markdown", help="Also write the tables as Markdown (as in docs/routing.md).")
                             ] = None,
) -> None:
    """Every strategy on every workload in the simulator: 16 nodes, 80% load, fixed seeds."""
    from ollamamax.bench import routing as bench
    from ollamamax.sim.run import available_strategies, table

    names = [s.strip() for s in strategy.split(",") if s.strip()] or available_strategies()
    report = bench.run_matrix(names, trace or bench.default_trace(), requests,
                              progress=err.print)
    if not out.is_terminal:
        out.width = max(out.width, 160)
    for workload in report["workloads"]:
        out.print(table(workload))
    for goal in report["goals"]:
        mark = "[green]met[/]" if goal["met"] else "[red]missed[/]"
        figures = ", ".join(f"{k} {v}" for k, v in goal.items() if k not in ("goal", "met"))
        out.print(f"goal: {goal['goal']}: {mark} ({figures})", highlight=False)
    if json_file is not None:
        bench.write_json(report, json_file)
        out.print(f"wrote {json_file}")
    if markdown_file is not None:
        markdown_file.write_text(bench.markdown(report))
        out.print(f"wrote {markdown_file}")


@app.command()
def honesty(
    requests: Annotated[int, typer.Option(min=20, help="Requests to replay.")] = 240,
    strategy: Annotated[str, typer.Option(help="Routing strategy.")] = "intelligent",
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results as JSON to this file.")] = None,
) -> None:
    """One workload in the simulator and for real (gateway + real-time sim nodes): TTFT."""
    import json as jsonlib

    from ollamamax.bench import honesty as bench

    report = bench.run(requests, strategy, progress=err.print)
    sim, real = report["simulated"], report["real"]
    out.print(f"TTFT p50 / p90 / p99: simulated {sim['ttft_p50_s']:.3f} / {sim['ttft_p90_s']:.3f}"
              f" / {sim['ttft_p99_s']:.3f} s, real {real['ttft_p50_s']:.3f} / "
              f"{real['ttft_p90_s']:.3f} / {real['ttft_p99_s']:.3f} s; failed {sim['failed']} / "
              f"{real['failed']}", highlight=False)
    verdict = "within" if report["within_15_percent"] else "NOT within"
    out.print(f"p50 gap {report['ttft_p50_gap']:.1%}: {verdict} 15%", highlight=False)
    if json_file is not None:
        json_file.write_text(jsonlib.dumps(report, indent=2) + "\n")
        out.print(f"wrote {json_file}")


@app.command()
def catalog(
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results as JSON to this file.")] = None,
    quick: Annotated[bool, typer.Option(help="A tiny smoke run (small sizes, short rounds).")
                     ] = False,
) -> None:
    """The optimisation catalogue's table, measured: each baseline against what ships.

    Both variants of every pair (docs/benchmarks.md) on the same generated inputs, the
    catalogue's own figures beside them, and the empirical complexity exponents.
    """
    from rich.table import Table

    from ollamamax.bench import catalog as bench

    report = bench.run(bench.Options.quick() if quick else bench.Options(), progress=err.print)
    if not out.is_terminal:
        out.width = max(out.width, 140)
    table = Table("metric", "unit", "before", "after", "catalogue before", "catalogue after",
                  title="The catalogue's results table, measured", box=None)
    for r in report["rows"]:
        table.add_row(r["metric"], r["unit"], f"{r['before']:,.4g}", f"{r['after']:,.4g}",
                      f"{r['seed_before']:,g}", f"{r['seed_after']:,g}")
    out.print(table)
    table = Table("component", "before", "after", "claimed before", "claimed after",
                  title="Empirical exponent k of time ~ n^k", box=None)
    for c in report["complexity"]:
        table.add_row(c["component"], f"{c['before_exponent']:.2f}", f"{c['after_exponent']:.2f}",
                      c["claimed_before"], c["claimed_after"])
    out.print(table)
    colours = {"met": "green", "missed": "red", "better than claimed": "cyan", "no claim": "dim"}
    for goal, verdict, figures in bench.goals(report):
        out.print(f"goal: {goal}: [{colours[verdict]}]{verdict}[/]"
                  + (f" ({figures})" if figures else ""), highlight=False)
    if json_file is not None:
        bench.write_json(report, json_file)
        out.print(f"wrote {json_file}")


@app.command()
def membership(
    nodes: Annotated[int, typer.Option(min=2, help="Simulated node agents.")] = 1000,
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results as JSON to this file.")] = None,
    steady: Annotated[float, typer.Option(min=1.0, help="Seconds of steady state measured.")
                      ] = 20.0,
    quick: Annotated[bool, typer.Option(help="A small smoke run (at most 50 nodes, 2 s, TTL 2 s).")
                     ] = False,
) -> None:
    """Cluster membership on a local etcd: N simulated nodes (telemetry changing every 2 s)
    and one gateway watch. Registration time, steady writes/s, watch propagation, dead node."""
    from ollamamax.bench import membership as bench
    from ollamamax.cluster.local_etcd import missing_reason

    reason = missing_reason()
    if reason:
        err.print(f"[bold red]error:[/] bench membership needs etcd: {reason}")
        raise typer.Exit(2)
    options = (bench.Options.quick(min(nodes, 50)) if quick
               else bench.Options.sized(nodes, steady_s=steady))
    result = bench.run(options, progress=err.print)
    out.print(" ".join(f"{k}={result[k]}" for k in bench.KEYS), highlight=False)
    for goal, met in bench.goals(result):
        out.print(f"goal: {goal}: " + ("[green]met[/]" if met else "[red]missed[/]"),
                  highlight=False)
    if json_file is not None:
        bench.write_json(result, json_file)
        out.print(f"wrote {json_file}")


@app.command()
def chaos(
    duration: Annotated[float, typer.Option(min=1.0, help="Seconds of each phase.")] = 60.0,
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="Write the chaos phase's figures as JSON to this file.")] = None,
    baseline_json: Annotated[Path | None, typer.Option(
        "--baseline-json", help="Write the fault-free phase's figures here too.")] = None,
    rate: Annotated[float | None, typer.Option(min=0.1, help="Requests per second.")] = None,
    quick: Annotated[bool, typer.Option(help="A few seconds per phase (figures meaningless)."
                                        )] = False,
    run_dir: Annotated[Path | None, typer.Option(
        help="Keep the processes' logs in this directory.")] = None,
    hedge: Annotated[bool, typer.Option(
        help="Run the gateway with hedging of non-streamed requests on.")] = False,
) -> None:
    """Steady load on a gateway over 5 sim nodes while one is killed and restarted, one
    paused and resumed, one slowed and one resets connections; then the same load without
    faults. Prints both; goals: nothing lost, TTFT p99 at most 2x the fault-free one.
    """
    import dataclasses

    from ollamamax.bench import chaos as bench

    options = bench.Options.quick() if quick else bench.Options(duration=duration)
    options = dataclasses.replace(options, rate=rate or options.rate, hedge=hedge,
                                  run_dir=str(run_dir) if run_dir else None)
    result = bench.run(options, progress=err.print)
    for name in ("baseline", "chaos"):
        figures = ", ".join(f"{k} {v}" for k, v in result[name].items())
        out.print(f"{name}: {figures}", highlight=False)
    for name in ("baseline", "chaos"):
        slowest = ", ".join(f"{t:.2f} s at {at:g} s" for at, t in result["slowest_ttft"][name])
        out.print(f"{name}: slowest TTFTs (when sent): {slowest}", highlight=False)
    for goal, met, figures in result["goals"]:
        mark = "[green]met[/]" if met else "[red]missed[/]"
        out.print(f"goal: {goal}: {mark} ({figures})", highlight=False)
    for phase, path in (("chaos", json_file), ("baseline", baseline_json)):
        if path is not None:
            bench.write_json(result[phase], path)
            out.print(f"wrote {path}")


@app.command()
def sync(
    nodes: Annotated[int, typer.Option(min=1, help="Receiving nodes (processes).")] = 8,
    size_mb: Annotated[float, typer.Option(min=0.1, help="Blob size in MB (10^6 bytes).")] = 64.0,
    upload_mbps: Annotated[float, typer.Option(
        min=0.1, help="Every node's upload limit, MB/s (its token bucket).")] = 20.0,
    chunk_kb: Annotated[int, typer.Option(min=64, help="Chunk size in KiB.")] = 1024,
    max_sources: Annotated[int, typer.Option(min=1, help="Holders a receiver pulls from at once.")
                           ] = 8,
    naive: Annotated[bool, typer.Option(help="Also time everyone pulling from the origin.")
                     ] = True,
    unthrottled: Annotated[bool, typer.Option(
        help="Instead: one transfer, origin to one receiver, no limits (bytes/s).")] = False,
    work_dir: Annotated[Path | None, typer.Option(
        "--dir", help="Where the stores go (e.g. /dev/shm; default: the temp dir).")] = None,
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results as JSON to this file.")] = None,
) -> None:
    """Distribute one blob from an origin to N peer processes on a local etcd, every upload
    limited: P2P time and naive time against the swarm lower bound, the origin's egress."""
    from ollamamax.bench import sync as bench
    from ollamamax.cluster.local_etcd import missing_reason

    reason = missing_reason()
    if reason:
        err.print(f"[bold red]error:[/] bench sync needs etcd: {reason}")
        raise typer.Exit(2)
    options = bench.Options(nodes=nodes, size_mb=size_mb, upload_mbps=upload_mbps,
                            chunk_size=chunk_kb << 10, max_sources=max_sources, naive=naive,
                            work_dir=str(work_dir) if work_dir else None)
    result = bench.run(options, unthrottled=unthrottled, progress=err.print)
    out.print(" ".join(f"{k}={v}" for k, v in result.items()), highlight=False)
    for goal, met in bench.goals(result):
        out.print(f"goal: {goal}: " + ("[green]met[/]" if met else "[red]missed[/]"),
                  highlight=False)
    if json_file is not None:
        bench.write_json(result, json_file)
        out.print(f"wrote {json_file}")

@app.command()
def cache(
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results as JSON to this file.")] = None,
    requests: Annotated[int, typer.Option(min=1, help="Requests of the workload.")] = 1500,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 8,
    pairs: Annotated[int, typer.Option(
        min=1, help="New chunks sent to both gateways to measure what a miss adds.")] = 400,
    tiers: Annotated[str, typer.Option(help="The cached gateway's tiers, in order.")
                     ] = "memory,disk",
    tiny: Annotated[bool, typer.Option(
        help="Use the tiny random model even if the SmolLM2 demo model is installed.")] = False,
    quick: Annotated[bool, typer.Option(help="A tiny smoke run.")] = False,
) -> None:
    """A retrieval-style embedding workload (70% of chunks repeat) through a gateway with the
    response cache and one without, over one llamacpp node: throughput, hit ratio per tier,
    hit p50 and what a miss adds."""
    from dataclasses import replace

    from ollamamax.bench import cache as bench

    names = tuple(t.strip() for t in tiers.split(",") if t.strip())
    options = bench.CacheBenchOptions.quick() if quick else bench.CacheBenchOptions(
        requests=requests, concurrency=concurrency, pairs=pairs)
    try:
        options = replace(options, tiers=names, tiny=tiny)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tiers") from None
    report = bench.run(options, progress=err.print)
    for line in bench.summary(report):
        out.print(line, highlight=False)
    if json_file is not None:
        report.write_json(json_file)
        out.print(f"wrote {json_file}")
    if report.errors:
        raise typer.Exit(1)


@app.command()
def pull(
    size_mb: Annotated[float, typer.Option(min=0.1, help="Blob size in MB (10^6 bytes).")] = 512.0,
    parts: Annotated[str, typer.Option(help="Part counts to time, comma-separated.")] = "1,4,16",
    repeat: Annotated[int, typer.Option(min=1, help="Pulls timed per part count (best kept).")
                      ] = 3,
    work_dir: Annotated[Path | None, typer.Option(
        "--dir", help="Where the stores go (default: the temp dir).")] = None,
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results as JSON to this file.")] = None,
) -> None:
    """Pull one blob from `ollamamax testing registry` on loopback, verified, in 1, 4 and 16
    parallel parts: seconds and MB/s, and sha256's own speed for comparison."""
    from ollamamax.bench import pull as bench

    counts = tuple(int(p) for p in parts.split(",") if p.strip())
    result = bench.run(bench.Options(size_mb=size_mb, parts=counts, repeat=repeat,
                                     work_dir=str(work_dir) if work_dir else None),
                       progress=err.print)
    out.print(json.dumps(result), highlight=False, soft_wrap=True)
    if json_file is not None:
        bench.write_json(result, json_file)
        out.print(f"wrote {json_file}")


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of integers",
                                 param_hint="--concurrency") from None
    if not levels or min(levels) < 1:
        raise typer.BadParameter("concurrency levels must be integers >= 1",
                                 param_hint="--concurrency")
    return levels
