"""``ollamamax sim``: the cluster simulator, one workload against several strategies."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ollamamax.errors import ConfigError

if TYPE_CHECKING:
    from ollamamax.sim.cluster import ClusterConfig
    from ollamamax.sim.workloads import Workload

out = Console()
err = Console(stderr=True)

Opt = typer.Option
TABLE_WIDTH = 160


def sim(
    nodes: Annotated[int, Opt(min=1, help="Simulated nodes.")] = 16,
    node_profile: Annotated[str, Opt(
        "--node-profile", help="Timing profile of the nodes, or a mix: gpu-8b:12,cpu-small:4 "
        "(counts scaled to --nodes).")] = "gpu-8b",
    models: Annotated[str, Opt(
        help="Models: a count, or NAME:TAG=SIZE,... (bytes or 4.9G). Default: the "
        "workload's (llama3.1:8b; zipf-models: 50 of realistic sizes).")] = "",
    workload: Annotated[str, Opt(
        help="shared-prefix, multi-turn, zipf-models, shifting-models, low-sharing or trace.")
                    ] = "shared-prefix",
    trace: Annotated[Path | None, Opt(help="Trace file for --workload trace.")] = None,
    trace_format: Annotated[str, Opt("--trace-format", help="mooncake or csv.")] = "mooncake",
    rate: Annotated[float | None, Opt(help="Arrivals per second.")] = None,
    load: Annotated[float | None, Opt(
        help="Arrivals as a fraction of the cluster's estimated capacity (default 0.8; a "
        "trace replays at its own pace unless --rate or --load is given).")] = None,
    cv: Annotated[float, Opt(
        help="Burstiness: coefficient of variation of inter-arrival gaps (1 Poisson, >1 "
        "Gamma bursts).")] = 1.0,
    duration: Annotated[float | None, Opt(help="Arrivals for this many virtual seconds.")] = None,
    requests: Annotated[int | None, Opt(min=1, help="Or this many requests (default 1024).")
                        ] = None,
    strategy: Annotated[str, Opt(help="Comma-separated strategies (default: every one "
                                      "available).")] = "",
    seed: Annotated[int, Opt(help="Seeds arrivals, shapes and random strategies.")] = 0,
    json_file: Annotated[Path | None, Opt("--json", help="Also write the results here.")] = None,
    slots: Annotated[int | None, Opt(min=1, help="Slots per loaded model "
                                               "(OLLAMA_NUM_PARALLEL; default 1).")] = None,
    max_loaded: Annotated[int | None, Opt(min=1, help="Models resident per node (default 3).")
                          ] = None,
    max_queue: Annotated[int | None, Opt(min=0, help="Node queue before 503 (default 512).")
                         ] = None,
    keep_alive: Annotated[float | None, Opt(help="Seconds a model stays loaded when idle "
                                                 "(default 300).")] = None,
    num_ctx: Annotated[int | None, Opt(
        min=1, help="Context per slot; a runner caches num_ctx x slots tokens (default 4096, "
        "trace 131072).")] = None,
    zipf: Annotated[float, Opt(help="shared-prefix: Zipf exponent of group popularity "
                                    "(0 uniform).")] = 0.0,
    telemetry: Annotated[float, Opt(help="Seconds between two telemetry reports of a node.")
                         ] = 1.0,
    network_ms: Annotated[float, Opt("--network-ms", help="One-way gateway-node latency.")] = 0.0,
    gateway_prefix_tokens: Annotated[int | None, Opt(
        "--gateway-prefix-tokens", min=1, help="Tokens of prompt prefixes the gateway remembers "
        "per node (default: what its prefix index holds, 4,096 blocks of 64 characters).")
        ] = None,
    gateway_queue: Annotated[str, Opt(
        "--gateway-queue", help="Hold requests at the gateway while every slot is busy: auto "
        "(only intelligent, as published), on, off.")] = "auto",
    prewarm: Annotated[bool, Opt(
        help="Load models ahead of their forecast demand (the gateway's scheduler.prewarm).")
                       ] = False,
    warmup: Annotated[float, Opt(
        help="Virtual seconds at the start whose arrivals are served but not counted (the "
        "cluster's first cold loads are not its steady state).")] = 0.0,
) -> None:
    """Simulate a cluster in virtual time and compare routing strategies on one workload.

    Every strategy sees the same arrivals on a fresh cluster; the routing code is the
    gateway's own.
    """
    from ollamamax.sim import cluster, workloads
    from ollamamax.sim.run import available_strategies, table, write_json

    if rate is not None and load is not None:
        raise ConfigError("give --rate or --load, not both")
    if duration is not None and requests is not None:
        raise ConfigError("give --duration or --requests, not both")
    options = workloads.WorkloadOptions(
        name=workload, requests=requests, duration=duration, rate=rate, load=load, cv=cv,
        seed=seed, models=workloads.parse_models(models), zipf=zipf,
        trace=str(trace) if trace else None, trace_format=trace_format)
    names = _strategies(strategy, available_strategies())
    base = cluster.ClusterConfig(nodes=nodes, profiles=cluster.parse_profiles(node_profile),
                                 seed=seed)
    wl = workloads.build(options, lambda p, o: cluster.capacity(_fit(base, slots=slots), p, o))
    config = _fit(base, wl, slots=slots, max_loaded=max_loaded, max_queue=max_queue,
                  keep_alive=keep_alive, num_ctx=num_ctx, telemetry_s=telemetry,
                  network_s=network_ms / 1000.0, gateway_queue=_queue_mode(gateway_queue),
                  gateway_prefix_tokens=gateway_prefix_tokens, warmup_s=warmup,
                  prewarm=prewarm)
    err.print(f"{wl.name}: {len(wl.requests)} requests at {wl.rate:.3g}/s on {nodes} nodes; "
              f"strategies: {', '.join(names)}")
    report = _run(wl, config, names)
    if not out.is_terminal:  # piped output has no width of its own: room for every column
        out.width = max(out.width, TABLE_WIDTH)
    out.print(table(report))
    if json_file is not None:
        write_json(report, json_file)
        out.print(f"wrote {json_file}")


def _strategies(text: str, available: list[str]) -> list[str]:
    from ollamamax.scheduler.strategies import STRATEGIES

    names = [s.strip() for s in text.split(",") if s.strip()] or available
    for name in names:
        if name not in STRATEGIES:
            raise ConfigError(f"unknown strategy {name!r}; valid strategies: "
                              + ", ".join(sorted(STRATEGIES)))
        if name not in available:
            raise ConfigError(f"strategy {name!r} is registered but not importable yet; "
                              "available: " + ", ".join(available))
    return names


def _queue_mode(text: str) -> bool | None:
    modes = {"auto": None, "on": True, "off": False}
    if text not in modes:
        raise ConfigError("--gateway-queue must be auto, on or off")
    return modes[text]


def _fit(base: ClusterConfig, wl: Workload | None = None, **given: Any) -> ClusterConfig:
    """The cluster settings: flags given, else the workload's own, else the defaults."""
    values = {k: v for k, v in given.items() if v is not None or k == "gateway_queue"}
    if wl is not None:
        for key in ("max_loaded", "keep_alive", "num_ctx"):
            if given.get(key) is None and getattr(wl, key) is not None:
                values[key] = getattr(wl, key)
    return dataclasses.replace(base, **values)


def _run(wl: Workload, config: ClusterConfig, names: list[str]) -> dict[str, Any]:
    from ollamamax.sim import run
    from ollamamax.sim.cluster import make_routes

    total = len(wl.requests)
    routes = make_routes(wl)
    columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    results = []
    with Progress(*columns, console=err, transient=False) as progress:
        for name in names:
            task = progress.add_task(name, total=total)
            started = time.perf_counter()
            report = run.run(wl, config, [name], routes=routes, progress=lambda _, done, __,
                             task=task: progress.update(task, completed=done))
            progress.update(task, completed=total,
                            description=f"{name} {time.perf_counter() - started:.1f} s")
            results.extend(report["results"])
    return {"workload": wl.name, "nodes": config.nodes, "results": results}
