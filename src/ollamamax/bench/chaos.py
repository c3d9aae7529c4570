"""``ollamamax bench chaos``: steady load on a gateway while nodes fail on a schedule.

Five `sim` nodes (real processes, real-time ``gpu-8b`` timing, 4 slots each) behind one
gateway with its default settings; node-3 and node-4 are reached through fault proxies
(``ollamamax testing faultproxy``). An open-loop Poisson load (three in four requests
streamed) runs twice on the same processes, each phase `duration` seconds:

1. **baseline**: no faults (the proxies pass everything through);
2. **chaos**, at fractions of the phase:

   | when        | fault                                                            |
   | ----------- | ---------------------------------------------------------------- |
   | 0.10 - 0.30 | node-1 killed with SIGKILL, then restarted (cold: model unloaded) |
   | 0.35 - 0.50 | node-2 paused with SIGSTOP, then resumed with SIGCONT             |
   | 0.50 - 0.75 | node-3 slowed: every chunk of its answers 150 ± 50 ms late        |
   | 0.65 - 0.85 | node-4 resets every connection as its answer starts (TCP RST)    |

Each phase reports (the JSON written by ``--json``, exactly these keys)::

    {"requests", "succeeded", "failed_before_first_byte", "failed_mid_stream", "lost",
     "ttft_p99_s", "e2e_p99_s", "retries", "retry_budget_exceeded"}

- ``failed_before_first_byte``: an error answer (a 5xx, or 4xx) instead of a stream;
- ``failed_mid_stream``: a 200 whose stream ended with Ollama's error line;
- ``lost``: neither an answer nor an error: no reply within the client's timeout (a hang),
  a connection dropped, or a stream that ended without its final line;
- ``ttft_p99_s``: time to the first line of the succeeded streamed requests (a non-streamed
  answer has no first token: it would only repeat its end-to-end time);
- ``e2e_p99_s``: time to the last byte of every succeeded request;
- ``retries`` / ``retry_budget_exceeded``: the gateway's counters over the phase.

Goals (issue 7): lost = 0; no request fails before its first byte; success >= 99.9% leaving
out mid-stream failures; chaos TTFT p99 <= 2 x baseline TTFT p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from ollamamax.testing.cluster import LocalCluster

MODEL = "bench:8b"
MODEL_BYTES = 1_000_000_000  # a cold load takes 2.5 s (gpu-8b: 2 s + 1 GB at 2 GB/s)
NODES = 5
SLOTS = 4
OUTPUT_TOKENS = 32  # ~0.4 s of decoding
PROMPT_WORDS = 60
RATE = 12.0  # requests per second: about 40% of the five nodes' capacity
STREAMED = 0.75
CLIENT_TIMEOUT_S = 60.0  # a request without an answer or an error by then is lost (a hang)
KEYS = ("requests", "succeeded", "failed_before_first_byte", "failed_mid_stream", "lost",
        "ttft_p99_s", "e2e_p99_s", "retries", "retry_budget_exceeded")
SLOW = "latency@downstream:latency=150,jitter=50"
RESET = "reset_peer@downstream:timeout=0"


@dataclass(frozen=True)
class Options:
    duration: float = 60.0  # seconds per phase
    rate: float = RATE
    seed: int = 0
    run_dir: str | None = None  # keep the processes' logs here (default: a temporary dir)
    hedge: bool = False  # the gateway hedges non-streamed requests (resilience.hedge)

    @classmethod
    def quick(cls) -> Options:
        """A smoke run: every fault, seconds long (the figures mean nothing)."""
        return cls(duration=4.0, rate=6.0)


@dataclass
class Tally:
    requests: int = 0
    succeeded: int = 0
    failed_before_first_byte: int = 0
    failed_mid_stream: int = 0
    lost: int = 0
    ttft: list[float] = field(default_factory=list)  # streamed requests only
    ttft_at: list[float] = field(default_factory=list)  # when each of those was sent
    e2e: list[float] = field(default_factory=list)
    lost_kinds: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def slowest(self, n: int = 10) -> list[tuple[float, float]]:
        """The `n` longest TTFTs as (seconds into the phase when sent, TTFT)."""
        pairs = sorted(zip(self.ttft_at, self.ttft, strict=True), key=lambda p: -p[1])
        return [(round(at, 2), round(t, 3)) for at, t in pairs[:n]]

    def to_json(self, retries: float, budget_exceeded: float) -> dict[str, Any]:
        return {"requests": self.requests, "succeeded": self.succeeded,
                "failed_before_first_byte": self.failed_before_first_byte,
                "failed_mid_stream": self.failed_mid_stream, "lost": self.lost,
                "ttft_p99_s": _p99(self.ttft), "e2e_p99_s": _p99(self.e2e),
                "retries": int(retries), "retry_budget_exceeded": int(budget_exceeded)}


def _p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    return round(float(np.percentile(values, 99, method="inverted_cdf")), 4)


# -- the load -----------------------------------------------------------------------------


def _prompt(rng: random.Random) -> str:
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                            for _ in range(rng.randint(2, 8))) for _ in range(PROMPT_WORDS))


async def one(session: aiohttp.ClientSession, url: str, prompt: str, stream: bool,
              tally: Tally) -> None:
    """One request, classified as it ends."""
    tally.requests += 1
    body = {"model": MODEL, "prompt": prompt, "stream": stream,
            "options": {"num_predict": OUTPUT_TOKENS}}
    sent = time.perf_counter()
    first: float | None = None
    last: bytes = b""
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT_S), session.post(
                url + "/api/generate", json=body) as r:
            if r.status != 200:
                await r.read()
                tally.failed_before_first_byte += 1
                return
            async for line in r.content:
                if line.strip():
                    first = first if first is not None else time.perf_counter() - sent
                    last = line
    except TimeoutError:
        _lost(tally, "hang")
        return
    except (aiohttp.ClientError, ConnectionError) as exc:
        _lost(tally, type(exc).__name__)
        return
    ended = time.perf_counter() - sent
    try:
        final = json.loads(last) if last else {}
    except ValueError:
        final = {}
    if final.get("error"):
        tally.failed_mid_stream += 1
    elif final.get("done") is True and first is not None:
        tally.succeeded += 1
        if stream:
            tally.ttft.append(first)
            tally.ttft_at.append(sent - tally.started)
        tally.e2e.append(ended)
    else:
        _lost(tally, "ended without its final line")


def _lost(tally: Tally, kind: str) -> None:
    tally.lost += 1
    tally.lost_kinds[kind] = tally.lost_kinds.get(kind, 0) + 1


async def load(url: str, duration: float, rate: float, rng: random.Random) -> Tally:
    """Poisson arrivals for `duration` seconds; then wait for every request to end."""
    tally = Tally()
    prompts = [_prompt(rng) for _ in range(64)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = []
        start = time.perf_counter()
        at = rng.expovariate(rate)
        while at < duration:
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(
                session, url, rng.choice(prompts), rng.random() < STREAMED, tally)))
            at += rng.expovariate(rate)
        await asyncio.gather(*tasks)
    return tally


# -- the faults ---------------------------------------------------------------------------

Step = tuple[float, str, Callable[[], Awaitable[None]]]


def schedule(cluster: LocalCluster) -> list[Step]:
    """(fraction of the phase, what, action), in time order."""

    def signal_node(name: str, sig: int) -> Callable[[], Awaitable[None]]:
        async def act() -> None:
            os.kill(cluster.node(name).pid, sig)
        return act

    def blocking(fn: Callable[..., Any], *args: Any) -> Callable[[], Awaitable[None]]:
        async def act() -> None:
            await asyncio.to_thread(fn, *args)
        return act

    return [
        (0.10, "node-1 killed (SIGKILL)", signal_node("node-1", signal.SIGKILL)),
        (0.30, "node-1 restarted", blocking(cluster.restart, "node-1")),
        (0.35, "node-2 paused (SIGSTOP)", signal_node("node-2", signal.SIGSTOP)),
        (0.50, "node-2 resumed (SIGCONT)", signal_node("node-2", signal.SIGCONT)),
        (0.50, f"node-3 slowed ({SLOW})", blocking(cluster.add_toxic, "node-3", SLOW)),
        (0.65, f"node-4 resets connections ({RESET})",
         blocking(cluster.add_toxic, "node-4", RESET)),
        (0.75, "node-3 back to speed", blocking(cluster.clear_toxics, "node-3")),
        (0.85, "node-4 stops resetting", blocking(cluster.clear_toxics, "node-4")),
    ]


async def run_faults(steps: list[Step], duration: float, log: list[str],
                     progress: Callable[[str], None]) -> None:
    start = time.perf_counter()
    for fraction, what, act in steps:
        delay = start + fraction * duration - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await act()
        line = f"{time.perf_counter() - start:6.1f} s  {what}"
        log.append(line)
        progress(line)


# -- a phase, a run ----------------------------------------------------------------------


async def _counter(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


async def phase(cluster: LocalCluster, options: Options, faults: bool,
                progress: Callable[[str], None]) -> tuple[dict[str, Any], list[str], Tally]:
    rng = random.Random(options.seed)
    before = [await _counter(cluster.url, n) for n in (
        "ollamamax_gateway_retries_total", "ollamamax_gateway_retry_budget_exceeded_total")]
    log: list[str] = []
    work = [load(cluster.url, options.duration, options.rate, rng)]
    if faults:
        work.append(run_faults(schedule(cluster), options.duration, log, progress))
    tally = (await asyncio.gather(*work))[0]
    after = [await _counter(cluster.url, n) for n in (
        "ollamamax_gateway_retries_total", "ollamamax_gateway_retry_budget_exceeded_total")]
    return tally.to_json(after[0] - before[0], after[1] - before[1]), log, tally


async def _warm(cluster: LocalCluster) -> None:
    """Load the model on every node at once (directly, not through the gateway)."""
    async with aiohttp.ClientSession() as session:
        async def one(url: str) -> None:
            async with session.post(url + "/api/generate",
                                    json={"model": MODEL, "keep_alive": "1h"}) as r:
                r.raise_for_status()

        await asyncio.gather(*(one(cluster.node(f"node-{i}").url) for i in range(1, NODES + 1)))


def run(options: Options, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Start the cluster, run the baseline then the chaos phase, stop everything."""
    with contextlib.ExitStack() as stack:
        run_dir = options.run_dir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="ollamamax-chaos-"))
        cluster = LocalCluster(Path(run_dir), engine="sim", nodes=NODES, proxied=[
            "node-3", "node-4"], node_args=[
            "--sim-profile", "gpu-8b", "--sim-model", f"{MODEL}={MODEL_BYTES}",
            "--num-parallel", str(SLOTS)],
            env={"OLLAMAMAX_RESILIENCE_HEDGE": "true"} if options.hedge else None)
        progress(f"starting {NODES} sim nodes, 2 fault proxies and a gateway")
        with cluster:
            _run_loop(_warm(cluster))
            cluster.wait_nodes(healthy=NODES)
            progress(f"baseline: {options.duration:g} s at {options.rate:g} requests/s, "
                     "no faults")
            baseline, _, base_tally = _run_loop(phase(cluster, options, False, progress))
            progress(f"chaos: {options.duration:g} s at {options.rate:g} requests/s, faults "
                     "on schedule")
            chaos, log, chaos_tally = _run_loop(phase(cluster, options, True, progress))
            gateway_log = cluster.supervisor.children["gateway"].log.read_text(errors="replace")
    return {"chaos": chaos, "baseline": baseline, "faults": log,
            "lost_kinds": {"chaos": chaos_tally.lost_kinds, "baseline": base_tally.lost_kinds},
            "slowest_ttft": {"chaos": chaos_tally.slowest(), "baseline": base_tally.slowest()},
            "goals": goals(chaos, baseline),
            "unexpected_errors": gateway_log.count("unexpected error"),
            "options": {"duration_s": options.duration, "rate_rps": options.rate,
                        "nodes": NODES, "slots": SLOTS, "output_tokens": OUTPUT_TOKENS,
                        "streamed": STREAMED, "hedge": options.hedge}}


def goals(chaos: dict[str, Any], baseline: dict[str, Any]) -> list[tuple[str, bool, str]]:
    counted = chaos["requests"] - chaos["failed_mid_stream"]
    success = chaos["succeeded"] / counted if counted else 0.0
    ratio = chaos["ttft_p99_s"] / baseline["ttft_p99_s"] if baseline["ttft_p99_s"] else 0.0
    return [
        ("lost = 0", chaos["lost"] == 0, f"lost {chaos['lost']}"),
        ("no request fails before its first byte", chaos["failed_before_first_byte"] == 0,
         f"{chaos['failed_before_first_byte']} failed before the first byte"),
        (">= 99.9% succeed, leaving out mid-stream failures", success >= 0.999,
         f"{success:.2%}"),
        ("TTFT p99 under faults <= 2 x fault-free", ratio <= 2.0,
         f"{chaos['ttft_p99_s']:.3f} s vs {baseline['ttft_p99_s']:.3f} s: {ratio:.2f}x"),
    ]


def write_json(figures: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """One phase's figures, exactly the documented keys."""
    Path(path).write_text(json.dumps({k: figures[k] for k in KEYS}, indent=2) + "\n")


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(coro)
    return uvloop.run(coro)
