"""``ollamamax bench honesty``: does the simulator tell the truth about the real gateway?

One workload runs twice: in the cluster simulator (virtual time) and for real, through a
gateway process in front of `sim` node processes that sleep the same timing model in real
time. Same requests, same arrival times, same strategy. The real side's TTFT is what an HTTP
client measures (first chunk of the stream), so it includes everything the simulator leaves
out: HTTP, JSON, the event loops, telemetry that arrives late. The two TTFT p50s should agree
within 15%.

The workload is shared-prefix shaped, small enough to run in a few minutes: 8 groups with
2,048-token system prompts, questions of 32-512 tokens, 256 tokens out, on 4 nodes of the
`gpu-8b` profile with 2 slots of 16,384 tokens each, Poisson arrivals at 60% of the cluster's
estimated capacity. The prefix caches are large enough to hold every group: with caches that
evict, which prompt lands where after an eviction is chaotic, and the fraction of requests
hitting a half-evicted prefix (so the TTFT median, which sits between discrete cache levels)
swings from run to run on either side.
Requests are ``/api/generate`` with ``raw`` prompts, so the node sees exactly the text the
simulator's block ids stand for.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from ollamamax.sim import cluster, timing, workloads
from ollamamax.sim.run import summarise
from ollamamax.testing.cluster import LocalCluster

MODEL = "bench:8b"
MODEL_BYTES = 4_900_000_000
NODES = 4
SLOTS = 2
NUM_CTX = 16384  # a node's prefix cache (num_ctx x slots) holds every group's prompt
GROUPS = 8
SYSTEM_TOKENS = 2048
QUESTION_TOKENS = (32, 512)  # uniform: TTFT varies continuously, so percentiles are stable
OUTPUT_TOKENS = 256
LOAD = 0.6


@dataclass
class Side:
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    failed: int


def _words(rng: random.Random, tokens: int) -> str:
    """About `tokens` tokens of text (the engines count ~4 characters a token)."""
    text = []
    size = 0
    while size < tokens * timing.CHARS_PER_TOKEN:
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8)))
        text.append(word)
        size += len(word) + 1
    return " ".join(text)


def make_requests(count: int, seed: int = 0) -> tuple[list[str], workloads.Workload]:
    """The prompts, and the same requests as a simulator workload (arrival times included)."""
    rng = random.Random(seed)
    systems = [_words(rng, SYSTEM_TOKENS) for _ in range(GROUPS)]
    prompts = [systems[rng.randrange(GROUPS)] + "\n" + _words(rng, rng.randint(*QUESTION_TOKENS))
               for _ in range(count)]
    config = _config()
    mean_prompt = float(np.mean([timing.estimate_tokens(p) for p in prompts]))
    rate = LOAD * cluster.capacity(config, mean_prompt, OUTPUT_TOKENS)
    arrivals = workloads.arrival_times(rate, np.random.default_rng([seed, 2]), count=count)
    requests = [workloads.SimRequest(float(at), MODEL, timing.estimate_tokens(p), OUTPUT_TOKENS,
                                     tuple(timing.prompt_blocks(p)))
                for p, at in zip(prompts, arrivals.tolist(), strict=True)]
    wl = workloads.Workload("honesty", requests, {MODEL: MODEL_BYTES}, timing.BLOCK_TOKENS, rate)
    return prompts, wl


def _config() -> cluster.ClusterConfig:
    return cluster.ClusterConfig(nodes=NODES, profiles=(("gpu-8b", 1),), slots=SLOTS,
                                 num_ctx=NUM_CTX)


def simulate(wl: workloads.Workload, strategy: str) -> Side:
    sim = cluster.Simulation(wl, _config(), strategy)
    result = summarise(strategy, sim, sim.run())
    return Side(result["ttft_p50_s"], result["ttft_p90_s"], result["ttft_p99_s"],
                result["failed"])


async def _one(session: aiohttp.ClientSession, url: str, prompt: str, at: float,
               start: float) -> float | None:
    await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
    sent = time.perf_counter()
    body = {"model": MODEL, "prompt": prompt, "raw": True, "stream": True,
            "options": {"num_predict": OUTPUT_TOKENS}}
    try:
        async with session.post(url + "/api/generate", json=body) as response:
            if response.status != 200:
                return None
            first = None
            async for _ in response.content.iter_any():
                if first is None:
                    first = time.perf_counter() - sent
            return first
    except aiohttp.ClientError:
        return None


async def _replay(url: str, prompts: list[str], wl: workloads.Workload) -> list[float | None]:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()
        return list(await asyncio.gather(*(
            _one(session, url, p, r.arrival, start)
            for p, r in zip(prompts, wl.requests, strict=True))))


def real(prompts: list[str], wl: workloads.Workload, strategy: str) -> Side:
    with tempfile.TemporaryDirectory(prefix="ollamamax-honesty-") as run_dir, LocalCluster(
            Path(run_dir), engine="sim", nodes=NODES,
            node_args=["--sim-profile", "gpu-8b", "--sim-model", f"{MODEL}={MODEL_BYTES}",
                       "--num-parallel", str(SLOTS), "--num-ctx", str(NUM_CTX)],
            gateway_args=["--strategy", strategy]) as c:
        ttfts = asyncio.run(_replay(c.url, prompts, wl))
    ok = np.array([t for t in ttfts if t is not None])
    pct = [float(np.percentile(ok, q)) for q in (50, 90, 99)] if ok.size else [np.nan] * 3
    return Side(*(round(p, 4) for p in pct), failed=len(ttfts) - int(ok.size))


def run(count: int = 240, strategy: str = "intelligent", seed: int = 0,
        progress: Any = print) -> dict[str, Any]:
    prompts, wl = make_requests(count, seed)
    progress(f"{count} requests at {wl.rate:.3g}/s on {NODES} nodes ({strategy}); "
             f"simulating, then replaying for real (about {wl.requests[-1].arrival:.0f} s)")
    sim_side = simulate(wl, strategy)
    real_side = real(prompts, wl, strategy)
    gap = abs(sim_side.ttft_p50_s - real_side.ttft_p50_s) / real_side.ttft_p50_s
    return {"workload": "shared-prefix (honesty)", "strategy": strategy, "requests": count,
            "rate_rps": round(wl.rate, 4), "nodes": NODES, "slots": SLOTS,
            "simulated": sim_side.__dict__, "real": real_side.__dict__,
            "ttft_p50_gap": round(gap, 4), "within_15_percent": gap <= 0.15}
