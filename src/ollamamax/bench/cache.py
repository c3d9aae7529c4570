"""``ollamamax bench cache``: a retrieval-style embedding workload with and without the cache.

A retrieval pipeline embeds chunks, and most of them it has embedded before: here 70% of
the requests repeat a chunk already sent (chosen uniformly among those), 30% bring a new one.
One ``llamacpp`` node serves the SmolLM2 demo model when its wheel is installed (else a tiny
random GGUF: the report says which); two gateways stand in front of it, one with the cache
(``[cache] tiers``, default memory then disk; with ``redis``, a redis-server of its own)
and one without (``tiers = []``). The same sequence of requests goes through each, closed
loop at `concurrency`; the run without the cache goes first and last (its throughput is the
mean of both), so a drift of the machine's speed weighs on both sides.

Figures:

- ``rps_with_cache``, ``rps_without_cache``: requests answered per second;
- ``hit_ratio``: hits / requests with the cache (every tier; from the response header);
- ``hit_p50_ms``: median time to the last byte of a hit;
- ``miss_added_ms``: what a miss costs over no cache at all. New chunks (misses) are sent
  one at a time, each to both gateways, the order alternating; per order, the median of the
  per-pair differences (cache minus no cache), and the figure is the mean of the two
  medians: the node's own variation cancels out pair by pair, and whatever the second of
  two identical requests gains on the node (llama.cpp may reuse the first one's work)
  cancels out between the two orders. These go to the tiny model, which the node serves beside the demo model:
  the gateway's cost does not depend on the model, and a ~6 ms answer lets a 0.1 ms
  difference show where SmolLM2's answers vary by hundreds of milliseconds;
- ``tiers``: per tier, lookups that hit and missed, and the bytes held, from the cached
  gateway's ``/metrics`` after the workload.

Node, gateways and load generator share the machine; the JSON records the load average.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from ollamamax.bench.gateway import BenchError, _load_average, _machine, _run_loop
from ollamamax.cache import tier_class
from ollamamax.models.demo import DEMO_MODEL, demo_gguf, ensure_demo_model
from ollamamax.models.store import ModelStore
from ollamamax.supervisor import Supervisor

NODE_ID = "cache-bench-node"
TINY_MODEL = "tiny:latest"
HEALTHY_WITHIN_S = 60.0
GOALS = ("miss_added_ms <= 0.2", "rps_with_cache >= 3 x rps_without_cache")
_WORDS = ("the", "model", "cache", "answer", "cluster", "node", "gateway", "request", "vector",
          "chunk", "retrieval", "document", "search", "index", "query", "token", "embedding",
          "latency", "memory", "disk", "shared", "replica", "digest", "manifest", "stream")
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
Progress = Callable[[str], None]


@dataclass(frozen=True)
class CacheBenchOptions:
    requests: int = 1500  # the workload, through each gateway
    concurrency: int = 8
    repeat: float = 0.7  # share of requests that repeat an earlier chunk
    pairs: int = 400  # new chunks sent to both gateways for miss_added_ms
    tiers: tuple[str, ...] = ("memory", "disk")
    seed: int = 0
    tiny: bool = False  # the tiny random model even when the demo model is installed

    @classmethod
    def quick(cls) -> CacheBenchOptions:
        return cls(requests=120, concurrency=4, pairs=20)

    def __post_init__(self) -> None:
        if self.requests < 1 or self.concurrency < 1 or self.pairs < 1:
            raise ValueError("requests, concurrency and pairs must be >= 1")
        if not 0 <= self.repeat < 1:
            raise ValueError("repeat must be in [0, 1)")
        if not self.tiers:
            raise ValueError("the cached gateway needs at least one tier")
        for name in self.tiers:
            tier_class(name)  # an unknown name lists the valid ones


@dataclass
class CacheBenchReport:
    options: CacheBenchOptions
    model: str = ""
    miss_model: str = TINY_MODEL  # the model miss_added_ms is measured with
    hit_ratio: float = 0.0
    miss_added_ms: float = 0.0
    hit_p50_ms: float = 0.0
    miss_p50_ms: float = 0.0
    rps_with_cache: float = 0.0
    rps_without_cache: float = 0.0
    p50_with_cache_ms: float = 0.0
    p50_without_cache_ms: float = 0.0
    tiers: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def goals(self) -> list[tuple[str, bool]]:
        return [(GOALS[0], self.miss_added_ms <= 0.2),
                (GOALS[1], self.rps_with_cache >= 3 * self.rps_without_cache)]

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("options", "meta")}
        out["options"] = asdict(self.options)
        out["goals"] = {goal: met for goal, met in self.goals()}
        out["meta"] = self.meta
        return out

    def write_json(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_bytes(msgspec.json.format(msgspec.json.encode(self.to_json())) + b"\n")


# -- the workload (pure) --------------------------------------------------------------------

def chunk_text(rng: random.Random, n: int) -> str:
    """A chunk of a document: about 40 words, numbered so no two chunks are the same."""
    return f"chunk {n}: " + " ".join(rng.choice(_WORDS) for _ in range(40))


def workload(requests: int, repeat: float, seed: int) -> list[str]:
    """The chunks to embed, in order: each repeats an earlier one with probability `repeat`."""
    rng = random.Random(seed)
    sent: list[str] = []
    order: list[str] = []
    for _ in range(requests):
        if sent and rng.random() < repeat:
            order.append(rng.choice(sent))
        else:
            sent.append(chunk_text(rng, len(sent)))
            order.append(sent[-1])
    return order


# -- processes ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoints:
    node: str
    cached: str
    plain: str


def prepare_model(store: ModelStore, tiny: bool) -> str:
    """Import the tiny model, and the demo model unless `tiny` or it is not installed;
    returns the name of the workload's model."""
    from ollamamax.testing.tiny_gguf import import_tiny_model

    import_tiny_model(store.root, name=TINY_MODEL)
    if not tiny and demo_gguf() is not None:
        ensure_demo_model(store)
        return DEMO_MODEL
    return TINY_MODEL


@contextlib.contextmanager
def cluster(options: CacheBenchOptions, model: list[str]) -> Iterator[Endpoints]:
    """A llamacpp node and two gateways (cache, no cache); all stopped on exit."""
    with contextlib.ExitStack() as stack:
        run = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ollamamax-cache-")))
        sup = stack.enter_context(Supervisor(run / "logs"))
        model.append(prepare_model(ModelStore(run / "models"), options.tiny))
        node = sup.start("node", ["node", "--engine", "llamacpp", "--listen", "127.0.0.1:0",
                                  "--id", NODE_ID, "--models-dir", str(run / "models")])
        node_url = sup.wait_ready(node)
        backend = ["--backend", f"{NODE_ID}={node_url}"]
        env = {"OLLAMAMAX_CACHE_TIERS": ",".join(options.tiers),
               "OLLAMAMAX_CACHE_DISK_DIR": str(run / "cache")}
        if "redis" in options.tiers:  # a redis-server of its own, stopped on exit
            from ollamamax.testing.redis import LocalRedis, missing_reason

            if missing_reason():
                raise BenchError(f"the redis tier needs redis-server: {missing_reason()}")
            env["OLLAMAMAX_CACHE_REDIS_URL"] = stack.enter_context(LocalRedis(run / "redis")).url
        cached = sup.start("gateway-cache", ["gateway", "--listen", "127.0.0.1:0", *backend],
                           env)
        plain = sup.start("gateway-plain", ["gateway", "--listen", "127.0.0.1:0", *backend],
                          {"OLLAMAMAX_CACHE_TIERS": ""})
        urls = Endpoints(node_url, sup.wait_ready(cached), sup.wait_ready(plain))
        for url, child in ((urls.cached, cached), (urls.plain, plain)):
            _wait_healthy(url, model[0], child.log_tail)
        yield urls


def _wait_healthy(url: str, model: str, log_tail: Callable[[], str]) -> None:
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            with _DIRECT.open(url + "/admin/nodes", timeout=2) as reply:
                nodes = msgspec.json.decode(reply.read())["nodes"]
            if any(n.get("healthy") and model in n.get("models", ()) for n in nodes):
                return
        time.sleep(0.05)
    raise BenchError(f"the gateway at {url} never saw {NODE_ID} healthy with {model}\n"
                     f"{log_tail()}")


# -- measuring ------------------------------------------------------------------------------

@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)  # seconds, per request
    states: list[str] = field(default_factory=list)  # the X-OllamaMax-Cache header ("" none)
    wall: float = 0.0
    errors: int = 0

    @property
    def rps(self) -> float:
        return (len(self.latencies) - self.errors) / self.wall if self.wall else 0.0


async def embed(session: aiohttp.ClientSession, url: str, model: str, text: str,
                ) -> tuple[float, str, bool]:
    body = msgspec.json.encode({"model": model, "input": text})
    started = time.perf_counter()
    async with session.post(url + "/api/embed", data=body,
                            headers={"Content-Type": "application/json"}) as reply:
        await reply.read()
        ok = reply.status == 200
        state = reply.headers.get("X-OllamaMax-Cache", "")
    return time.perf_counter() - started, state, ok


async def closed_loop(url: str, model: str, chunks: list[str], concurrency: int) -> Run:
    """Every chunk once, `concurrency` requests in flight, in order of the list."""
    run = Run(latencies=[0.0] * len(chunks), states=[""] * len(chunks))
    position = iter(range(len(chunks)))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for i in position:
                latency, state, ok = await embed(session, url, model, chunks[i])
                run.latencies[i], run.states[i] = latency, state
                run.errors += 0 if ok else 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.wall = time.perf_counter() - started
    return run


async def paired_misses(urls: Endpoints, model: str, chunks: list[str]) -> list[float]:
    """Each new chunk to both gateways, one request at a time, the order alternating; the
    per-pair difference (cache - no cache) in ms."""
    diffs = []
    async with aiohttp.ClientSession() as session:
        for i, text in enumerate(chunks):
            order = (urls.cached, urls.plain) if i % 2 == 0 else (urls.plain, urls.cached)
            took = {}
            for url in order:
                took[url], state, ok = await embed(session, url, model, text)
                if not ok or (url == urls.cached and state != "miss"):
                    raise BenchError(f"a new chunk was not a plain miss ({state!r}, ok={ok})")
            diffs.append((took[urls.cached] - took[urls.plain]) * 1000)
    return diffs


def tier_stats(url: str, tiers: tuple[str, ...]) -> dict[str, dict[str, int]]:
    with _DIRECT.open(url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()

    def value(pattern: str) -> int:
        found = re.search(pattern, text, re.M)
        return int(float(found.group(1))) if found else 0

    return {tier: {
        "hits": value(rf'^ollamamax_cache_lookups_total{{result="hit",tier="{tier}"}} (\S+)$'),
        "misses": value(rf'^ollamamax_cache_lookups_total{{result="miss",tier="{tier}"}} (\S+)$'),
        "bytes": value(rf'^ollamamax_cache_bytes{{tier="{tier}"}} (\S+)$')} for tier in tiers}


def _p50_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else 0.0


async def measure(urls: Endpoints, model: str, options: CacheBenchOptions,
                  report: CacheBenchReport, progress: Progress) -> None:
    chunks = workload(options.requests, options.repeat, options.seed)
    rng = random.Random(options.seed + 1)
    for url in (urls.cached, urls.plain):  # load the model; nothing measured
        await closed_loop(url, model, [chunk_text(rng, -1 - i) for i in range(4)], 1)
    progress(f"{len(chunks)} requests ({len(set(chunks))} distinct chunks) at concurrency "
             f"{options.concurrency}: without the cache, with it, without it again")
    before = await closed_loop(urls.plain, model, chunks, options.concurrency)
    cached = await closed_loop(urls.cached, model, chunks, options.concurrency)
    after = await closed_loop(urls.plain, model, chunks, options.concurrency)
    report.tiers = tier_stats(urls.cached, options.tiers)
    progress(f"{options.pairs} new chunks, each to both gateways, for the cost of a miss")
    await closed_loop(urls.cached, TINY_MODEL, [chunk_text(rng, -100)], 1)  # loaded
    diffs = await paired_misses(urls, TINY_MODEL, [chunk_text(rng, 10**6 + i)
                                                   for i in range(options.pairs)])
    hits = [lat for lat, state in zip(cached.latencies, cached.states, strict=True)
            if state.startswith("hit")]
    misses = [lat for lat, state in zip(cached.latencies, cached.states, strict=True)
              if state == "miss"]
    report.hit_ratio = round(len(hits) / len(chunks), 4)
    report.hit_p50_ms = round(_p50_ms(hits), 3)
    report.miss_p50_ms = round(_p50_ms(misses), 3)
    cache_first, plain_first = diffs[0::2], diffs[1::2]
    medians = [statistics.median(side) for side in (cache_first, plain_first) if side]
    report.miss_added_ms = round(statistics.fmean(medians), 3)
    report.rps_with_cache = round(cached.rps, 1)
    report.rps_without_cache = round((before.rps + after.rps) / 2, 1)
    report.p50_with_cache_ms = round(_p50_ms(cached.latencies), 3)
    report.p50_without_cache_ms = round(_p50_ms(before.latencies + after.latencies), 3)
    report.errors = before.errors + cached.errors + after.errors
    report.meta["rps_without_cache_runs"] = [round(before.rps, 1), round(after.rps, 1)]
    report.meta["miss_added_ms_mean"] = round(statistics.fmean(diffs), 3)
    report.meta["miss_added_ms_median_cache_first"] = round(statistics.median(cache_first), 3)
    report.meta["miss_added_ms_median_plain_first"] = (
        round(statistics.median(plain_first), 3) if plain_first else None)


def run(options: CacheBenchOptions, progress: Progress = lambda _: None) -> CacheBenchReport:
    report = CacheBenchReport(options, meta=_machine())
    started = time.perf_counter()
    model: list[str] = []
    with cluster(options, model) as urls:
        report.model = model[0]
        progress(f"model {model[0]} on one llamacpp node; gateways with tiers "
                 f"{','.join(options.tiers)} and without a cache")
        _run_loop(measure(urls, model[0], options, report, progress))
    report.meta["wall_s"] = round(time.perf_counter() - started, 1)
    report.meta["load_average_after"] = _load_average()
    return report


def summary(report: CacheBenchReport) -> list[str]:
    lines = [
        f"model {report.model}: hit ratio {report.hit_ratio:.1%}, hit p50 "
        f"{report.hit_p50_ms:.3f} ms, miss p50 {report.miss_p50_ms:.3f} ms",
        f"throughput {report.rps_with_cache:,.1f} req/s with the cache, "
        f"{report.rps_without_cache:,.1f} without "
        f"(x{report.rps_with_cache / max(report.rps_without_cache, 1e-9):.2f})",
        f"a miss adds {report.miss_added_ms:.3f} ms (paired differences, mean of the two "
        f"orders' medians, {TINY_MODEL})",
    ]
    for tier, stats in report.tiers.items():
        lines.append(f"tier {tier}: {stats['hits']} hits, {stats['misses']} misses, "
                     f"{stats['bytes']:,} bytes")
    lines += [f"goal: {goal}: {'met' if met else 'missed'}" for goal, met in report.goals()]
    if report.errors:
        lines.append(f"{report.errors} requests failed")
    return lines
