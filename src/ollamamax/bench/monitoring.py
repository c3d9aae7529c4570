"""What monitoring costs the gateway: CPU and memory with and without it, under a fixed load.

    python -m ollamamax.bench.monitoring [--rate 200] [--seconds 20] [--json FILE]

One `sim` node answering instantly and a gateway in front of it, started twice: as shipped
(metrics catalogue, sliding windows, the sampler and alert loop, request ids) and as a
*baseline* with those taken out (the router that records nothing, no monitor loop, no request
ids: the gateway as it was before them; the Prometheus metrics that predate the catalogue stay
in both). Each phase offers a fixed load (an open loop: `rate` non-streamed requests a second,
whatever the answers' speed) for `seconds`, optionally with dashboards open (each one a
``/dashboard/events`` stream read as a browser would), and reads the gateway's CPU time and
RSS from the kernel. A fixed rate makes CPU comparable between phases; a closed loop would
only show the CPU saturated. Also times one dashboard snapshot of a 1,000-node view.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from ollamamax.supervisor import Child, Supervisor, die_with_parent

MODEL = "bench:latest"


def serve_baseline(argv: list[str]) -> None:
    """``ollamamax gateway ARGV`` without the monitoring of issue 8 (the comparison's baseline)."""
    from aiohttp import web

    from ollamamax.cli import main
    from ollamamax.dashboard import routes
    from ollamamax.gateway import app as gateway_app
    from ollamamax.observability import request_ids
    from ollamamax.scheduler.router import Router

    class _Idle:
        def __init__(self, gateway: Any) -> None:
            pass

    def plain_router(metrics: Any, scheduler: Any, view: Any, *args: Any, window: float = 0.0,
                     **kwargs: Any) -> Router:
        return Router(scheduler, view, *args, **kwargs)

    @web.middleware
    async def passthrough(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request)

    gateway_app.observed_router = plain_router  # type: ignore[assignment]
    gateway_app.Monitor = _Idle  # type: ignore[assignment,misc]
    routes.install = lambda app, monitor: None  # type: ignore[assignment]
    request_ids.middleware = passthrough  # type: ignore[assignment]
    sys.argv = ["ollamamax", "gateway", *argv]
    main()


async def _open_loop(url: str, rate: float, seconds: float) -> tuple[int, int]:
    """`rate` requests a second for `seconds`; (answered 200, failed)."""
    body = json.dumps({"model": MODEL, "prompt": "hello", "stream": False,
                       "options": {"num_predict": 8}}).encode()
    ok = failed = 0
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        async def one() -> None:
            nonlocal ok, failed
            try:
                async with session.post(url + "/api/generate", data=body) as reply:
                    await reply.read()
                    ok += reply.status == 200
                    failed += reply.status != 200
            except aiohttp.ClientError:
                failed += 1

        tasks = set()
        start = time.perf_counter()
        n = int(rate * seconds)
        for k in range(n):
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
    return ok, failed


async def _dashboard(url: str, stop: asyncio.Event, events: list[int]) -> None:
    """Read the dashboard's event stream until `stop`, counting its events."""
    async with aiohttp.ClientSession(trust_env=False) as session, \
            session.get(url + "/dashboard/events", timeout=aiohttp.ClientTimeout(total=None)) as reply:
        reader = asyncio.ensure_future(_read_events(reply, events))
        await stop.wait()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def _read_events(reply: aiohttp.ClientResponse, events: list[int]) -> None:
    async for line in reply.content:
        if line.startswith(b"data:"):
            events.append(len(line))


async def _monitor_cpu(url: str) -> float | None:
    """The gateway's own count of the CPU its monitoring loop used (None: the baseline)."""
    async with aiohttp.ClientSession(trust_env=False) as session, \
            session.get(url + "/metrics") as reply:
        for line in (await reply.text()).splitlines():
            if line.startswith("ollamamax_gateway_monitor_cpu_seconds_total "):
                return float(line.split()[1])
    return None


async def _phase(url: str, proc: psutil.Process, rate: float, seconds: float,
                 dashboards: int) -> dict[str, Any]:
    stop = asyncio.Event()
    events: list[int] = []
    streams = [asyncio.ensure_future(_dashboard(url, stop, events)) for _ in range(dashboards)]
    await asyncio.sleep(1.0)  # streams open, first snapshots sent
    monitor_before = await _monitor_cpu(url)
    before, wall = proc.cpu_times(), time.perf_counter()
    if rate:
        ok, failed = await _open_loop(url, rate, seconds)
    else:
        await asyncio.sleep(seconds)
        ok = failed = 0
    after, elapsed = proc.cpu_times(), time.perf_counter() - wall
    monitor_after = await _monitor_cpu(url)
    monitor = None if monitor_before is None or monitor_after is None else \
        round(100 * (monitor_after - monitor_before) / elapsed, 3)
    rss = proc.memory_info().rss
    stop.set()
    await asyncio.gather(*streams, return_exceptions=True)
    cpu = (after.user + after.system) - (before.user + before.system)
    return {"rate": rate, "dashboards": dashboards, "seconds": round(elapsed, 2),
            "answered": ok, "failed": failed, "cpu_percent": round(100 * cpu / elapsed, 2),
            "cpu_us_per_request": round(1e6 * cpu / ok, 1) if ok else None,
            "monitor_loop_cpu_percent": monitor, "rss_mb": round(rss / (1 << 20), 1),
            "event_bytes": round(sum(events) / len(events)) if events else None}


def _start(sup: Supervisor, name: str, node_url: str, baseline: bool) -> tuple[str, int]:
    args = ["--listen", "127.0.0.1:0", "--backend", f"bench-node={node_url}",
            "--log-level", "warning"]
    if not baseline:
        child = sup.start(name, ["gateway", *args])
        return sup.wait_ready(child), child.pid
    # the same command through this module's baseline entry point, supervised alike
    announce, log = sup.run_dir / f"{name}.ready.json", sup.run_dir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ollamamax.bench.monitoring", "--serve-baseline", *args,
             "--announce-file", str(announce)], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)  # noqa: PLW1509
    child = Child(name, args, proc, announce, log)
    sup.children[name] = child
    return sup.wait_ready(child), child.pid


def _wait_healthy(url: str, timeout: float = 20.0) -> None:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with opener.open(url + "/health", timeout=2) as reply:
                if json.loads(reply.read()).get("nodes_healthy") == 1:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} has no healthy node after {timeout:g} s")


def snapshot_ms(nodes: int = 1000, repeat: int = 20) -> float:
    """Median time to build and encode one dashboard snapshot of a view of `nodes` nodes."""
    from ollamamax import config as cfg
    from ollamamax.gateway.app import Gateway

    conf = cfg.load(env={}, overrides={"gateway.backends": tuple(
        f"n{i}=http://10.0.{i // 250}.{i % 250 + 1}:11435" for i in range(nodes))})
    gw = Gateway(conf)
    for i in range(nodes):
        gw.view.info[i] = {"engine": "sim", "busy": 1, "slots": 4, "memory": {"rss_bytes": 1 << 28},
                           "loaded": [{"name": "m:1b", "slots": 4, "busy": 1}]}
    gw.monitor.sample()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        gw.monitor.sampler.ticks += 1  # a new tick: nothing cached
        gw.monitor.snapshot_json()
        times.append(time.perf_counter() - started)
    times.sort()
    return round(1000 * times[len(times) // 2], 2)


async def _run(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds,
                              "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with Supervisor(run_dir) as sup:
        node = sup.start("node", ["node", "--listen", "127.0.0.1:0", "--id", "bench-node",
                                  "--engine", "sim", "--sim-profile", "instant",
                                  "--sim-model", f"{MODEL}=1000", "--num-parallel", "64",
                                  "--log-level", "warning"])
        node_url = sup.wait_ready(node)
        for label, baseline, plan in (
                ("baseline", True, [(0, 0), (args.rate, 0)]),
                ("monitoring", False, [(0, 0), (0, 1), (args.rate, 0), (args.rate, 1),
                                       (args.rate, 5)])):
            url, pid = _start(sup, f"gateway-{label}", node_url, baseline)
            _wait_healthy(url)
            proc = psutil.Process(pid)
            await _open_loop(url, args.rate, 2.0)  # warm: connections, model loaded
            phases = []
            for rate, dashboards in plan:
                phase = await _phase(url, proc, rate, args.seconds, dashboards)
                print(label, phase, flush=True)
                phases.append(phase)
            report[label] = phases
            sup.stop(sup.children[f"gateway-{label}"])
    report["snapshot_ms_1000_nodes"] = snapshot_ms()
    report["load_after"] = os.getloadavg()
    return report


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-baseline":
        serve_baseline(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests a second")
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ollamamax-bench-monitoring-") as tmp:
        report = asyncio.run(_run(args, Path(tmp)))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
