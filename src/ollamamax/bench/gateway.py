"""``ollamamax bench gateway``: the latency the gateway adds to a request.

One `sim` node answers instantly (profile ``instant``, 64 slots so no request waits for one),
so what is measured is HTTP and the OllamaMax code on the path, not inference. Every case
(concurrency x streamed or not) is measured twice, against the node directly and through a
gateway in front of it, with the same load generator (`ollamamax.bench.loadgen`) in this
process. The two sides alternate in rounds ordered direct-gateway, gateway-direct, ... (ABBA),
so a drift of the machine's speed during the run weighs on both sides alike.

Figures per case:

- ``direct_p50_ms``, ``gateway_p50_ms``: median time to the last byte;
- ``added_p50_ms`` = gateway p50 - direct p50;
- ``added_p99_ms`` = gateway p99 - direct p99: a difference of two percentiles (each exact,
  nearest-rank), not a percentile of per-request differences, which cannot be observed;
- ``direct_rps``, ``gateway_rps``: successful requests per second, closed loop;
- ``cpu_us_per_request``: CPU (user + system) each process spent per measured request,
  from the kernel's per-process counters (10 ms ticks: meaningful for full runs, not --quick).

Node, gateway and load generator share the machine, as they would on a 2-core box running
the bench: the figures include that contention, and the JSON records the load average
before and after, since anything else running on the machine shows in the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.table import Table

from ollamamax import __version__
from ollamamax.bench import loadgen
from ollamamax.errors import OllamaMaxError
from ollamamax.supervisor import Supervisor

MODEL = "bench:latest"
NODE_ID = "bench-node"
NUM_PREDICT = 8  # tokens per answer: a stream of 8 chunks and a final one
DEFAULT_REQUESTS = 4000  # per case and side; the full matrix runs in about a minute
DEFAULT_CONCURRENCY = (1, 16, 64)
ROUNDS = 4  # alternations of direct and gateway per case
QUICK_REQUESTS = 40
QUICK_ROUNDS = 2
HEALTHY_WITHIN_S = 20.0
ADDED_P99_MEANS = "added_p99_ms = gateway_p99_ms - direct_p99_ms (difference of percentiles)"

# The goals of the issue, on a 2-core machine with the load generator on it: reported only.
GOALS = (
    ("added p50 <= 0.5 ms at concurrency 1", lambda c: c.concurrency == 1,
     lambda c: c.added_p50_ms <= 0.5),
    ("added p99 <= 2 ms at concurrency 1", lambda c: c.concurrency == 1,
     lambda c: c.added_p99_ms <= 2.0),
    (">= 2,000 requests/s non-streamed at concurrency 64",
     lambda c: c.concurrency == 64 and not c.stream, lambda c: c.gateway_rps >= 2000),
)


class BenchError(OllamaMaxError):
    """The benchmark could not run (a process did not start, the node never got healthy)."""


@dataclass(frozen=True)
class BenchOptions:
    requests: int = DEFAULT_REQUESTS  # measured per case and side, over all rounds
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    streams: tuple[bool, ...] = (False, True)
    rounds: int = ROUNDS
    warmup: int | None = None  # per round and side; None: scaled to the concurrency

    @classmethod
    def quick(cls, concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY) -> BenchOptions:
        """A smoke run: every case, a few requests each."""
        return cls(requests=QUICK_REQUESTS, concurrency=concurrency, rounds=QUICK_ROUNDS,
                   warmup=4)

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.requests < self.rounds:
            raise ValueError("need at least one request per round and at least one round")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError("concurrency levels must be >= 1")

    def warmup_for(self, concurrency: int) -> int:
        return self.warmup if self.warmup is not None else max(50, 4 * concurrency)


@dataclass(frozen=True)
class Side:
    """One side of a case (direct or through the gateway), all rounds merged."""

    p50_ms: float
    p99_ms: float
    rps: float
    ok: int
    errors: dict[str, int]
    cpu_us: dict[str, float]  # CPU per request of "loadgen", "node" and "gateway"

    @classmethod
    def of(cls, rounds: list[tuple[loadgen.LoadResult, dict[str, float]]]) -> Side:
        result = loadgen.merge([r for r, _ in rounds])
        cpu_s: dict[str, float] = {}
        for _, spent in rounds:
            for name, seconds in spent.items():
                cpu_s[name] = cpu_s.get(name, 0.0) + seconds
        per = max(result.completed, 1)
        return cls(result.percentile_ms(50), result.percentile_ms(99), result.rps,
                   result.ok_count, dict(result.errors),
                   {name: round(seconds * 1e6 / per, 1) for name, seconds in sorted(cpu_s.items())})


@dataclass(frozen=True)
class CaseResult:
    concurrency: int
    stream: bool
    direct: Side
    gateway: Side

    @property
    def added_p50_ms(self) -> float:
        return self.gateway.p50_ms - self.direct.p50_ms

    @property
    def added_p99_ms(self) -> float:
        """Gateway p99 minus direct p99 (see the module docstring)."""
        return self.gateway.p99_ms - self.direct.p99_ms

    @property
    def error_count(self) -> int:
        return sum(self.direct.errors.values()) + sum(self.gateway.errors.values())

    @property
    def gateway_rps(self) -> float:
        return self.gateway.rps

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "stream": self.stream,
            "direct_p50_ms": round(self.direct.p50_ms, 4),
            "gateway_p50_ms": round(self.gateway.p50_ms, 4),
            "added_p50_ms": round(self.added_p50_ms, 4),
            "added_p99_ms": round(self.added_p99_ms, 4),
            "direct_rps": round(self.direct.rps, 1),
            "gateway_rps": round(self.gateway.rps, 1),
            # Beyond the documented keys: what the added figures come from, and errors.
            "direct_p99_ms": round(self.direct.p99_ms, 4),
            "gateway_p99_ms": round(self.gateway.p99_ms, 4),
            "requests": {"direct": self.direct.ok, "gateway": self.gateway.ok},
            "errors": {"direct": self.direct.errors, "gateway": self.gateway.errors},
            "cpu_us_per_request": {"direct": self.direct.cpu_us, "gateway": self.gateway.cpu_us},
        }


@dataclass
class BenchReport:
    options: BenchOptions
    cases: list[CaseResult] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(c.error_count for c in self.cases)

    def goals(self) -> list[tuple[str, bool | None]]:
        """Each goal of the issue and whether this run met it (None: no case measured it)."""
        verdicts: list[tuple[str, bool | None]] = []
        for text, applies, met in GOALS:
            cases = [c for c in self.cases if applies(c)]
            verdicts.append((text, all(met(c) for c in cases) if cases else None))
        return verdicts

    def to_json(self) -> dict[str, Any]:
        return {"cases": [c.to_json() for c in self.cases],
                "definitions": {"added_p99_ms": ADDED_P99_MEANS,
                                "latency": "time to the last byte, nearest-rank percentiles",
                                "rps": "successful requests per second, closed loop",
                                "cpu_us_per_request": "CPU (user + system) of each process "
                                "during a side's measured requests, per request"},
                "options": asdict(self.options), "meta": self.meta,
                "errors": self.error_count}

    def write_json(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


# -- requests -----------------------------------------------------------------------------


def chat_body(stream: bool) -> bytes:
    return json.dumps({
        "model": MODEL, "stream": stream, "options": {"num_predict": NUM_PREDICT},
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
    }, separators=(",", ":")).encode()


def target(url: str, stream: bool) -> loadgen.Target:
    return loadgen.Target(url, "/api/chat", chat_body(stream))


# -- processes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    node: str
    gateway: str
    pids: dict[str, int]  # "node" and "gateway"


class CpuMeter:
    """CPU seconds (user + system) used so far by the node, the gateway and this process."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def snapshot(self) -> dict[str, float]:
        seconds = {"loadgen": time.process_time()}
        for name, proc in self._procs.items():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                seconds[name] = times.user + times.system
        return seconds


@contextlib.contextmanager
def cluster(run_dir: str | os.PathLike[str] | None = None) -> Iterator[Endpoints]:
    """A `sim` node answering instantly and a gateway in front of it; both stopped on exit,
    whatever happens (Ctrl-C included)."""
    with contextlib.ExitStack() as stack:
        if run_dir is None:
            run_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="ollamamax-bench-"))
        run = Path(run_dir)
        sup = stack.enter_context(Supervisor(run / "logs"))
        node = sup.start("node", [
            "node", "--engine", "sim", "--sim-profile", "instant",
            # An instant node has no compute for slots to share: give it one slot per client,
            # so the gateway's admission queue never holds a request and what is measured is
            # the path itself (the queue's own cost shows in the routing benchmark instead).
            "--num-parallel", "64",
            "--sim-model", f"{MODEL}={1_000_000}", "--listen", "127.0.0.1:0",
            "--id", NODE_ID, "--models-dir", str(run / "models")])
        node_url = sup.wait_ready(node)
        gw = sup.start("gateway", ["gateway", "--listen", "127.0.0.1:0",
                                   "--backend", f"{NODE_ID}={node_url}"])
        gateway_url = sup.wait_ready(gw)
        wait_healthy(gateway_url, gw.log_tail)
        yield Endpoints(node_url, gateway_url, {"node": node.pid, "gateway": gw.pid})


# 127.0.0.1 is never reached through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_healthy(gateway_url: str, log_tail: Callable[[], str],
                 within: float = HEALTHY_WITHIN_S) -> None:
    """Poll ``GET /admin/nodes`` until the node is healthy with the bench model."""
    deadline = time.monotonic() + within
    seen = ""
    while time.monotonic() < deadline:
        try:
            with _DIRECT.open(gateway_url + "/admin/nodes", timeout=2) as reply:
                nodes = json.loads(reply.read())["nodes"]
        except (OSError, ValueError, KeyError) as exc:
            seen = str(exc)
        else:
            seen = json.dumps(nodes)
            if any(n.get("id") == NODE_ID and n.get("healthy") and MODEL in n.get("models", ())
                   for n in nodes):
                return
        time.sleep(0.05)
    raise BenchError(f"the gateway did not report {NODE_ID} healthy with {MODEL} within "
                     f"{within:g} s; last answer: {seen}\n{log_tail()}")


# -- measuring ----------------------------------------------------------------------------

Progress = Callable[[str], None]


async def measure_case(endpoints: Endpoints, concurrency: int, stream: bool,
                       options: BenchOptions, progress: Progress) -> CaseResult:
    """Alternate direct and gateway rounds (ABBA) and merge each side's rounds."""
    meter = CpuMeter(endpoints.pids)
    rounds: dict[str, list[tuple[loadgen.LoadResult, dict[str, float]]]] = {
        "direct": [], "gateway": []}
    urls = {"direct": endpoints.node, "gateway": endpoints.gateway}
    per_round = _split(options.requests, options.rounds)
    progress(f"concurrency {concurrency}, {'streamed' if stream else 'whole answers'}: "
             f"{options.requests} requests per side in {len(per_round)} rounds")
    for i, requests in enumerate(per_round):
        order = ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct")
        for side in order:
            try:
                rounds[side].append(await measure_round(
                    target(urls[side], stream), concurrency, requests,
                    options.warmup_for(concurrency), meter))
            except ConnectionError as exc:
                raise BenchError(f"{side} run failed: {exc}") from None
    return CaseResult(concurrency, stream, Side.of(rounds["direct"]),
                      Side.of(rounds["gateway"]))


async def measure_round(goal: loadgen.Target, concurrency: int, requests: int, warmup: int,
                        meter: CpuMeter) -> tuple[loadgen.LoadResult, dict[str, float]]:
    """One warmed-up run and the CPU seconds each process spent on its measured part."""
    async with loadgen.LoadGenerator(goal, concurrency) as gen:
        if warmup:
            await gen.run(requests=warmup, record=False)
        before = meter.snapshot()
        result = await gen.run(requests=requests)
        after = meter.snapshot()
    return result, {name: after[name] - before[name] for name in after.keys() & before.keys()}


async def measure(endpoints: Endpoints, options: BenchOptions,
                  progress: Progress) -> list[CaseResult]:
    return [await measure_case(endpoints, c, stream, options, progress)
            for stream in options.streams for c in options.concurrency]


def run(options: BenchOptions, progress: Progress = lambda _: None) -> BenchReport:
    """Start the processes, measure every case, stop the processes."""
    report = BenchReport(options, meta=_machine())
    started = time.perf_counter()
    with _sigterm_interrupts(), cluster() as endpoints:
        report.cases = _run_loop(measure(endpoints, options, progress))
    report.meta["wall_s"] = round(time.perf_counter() - started, 1)
    report.meta["load_average_after"] = _load_average()
    return report


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the bench like Ctrl-C does: processes stopped, temporary files removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(coro)
    return uvloop.run(coro)


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _load_average() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def _machine() -> dict[str, Any]:
    return {"ollamamax": __version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "load_average_before": _load_average(),
            "note": "node, gateway and load generator share this machine"}


# -- showing ------------------------------------------------------------------------------


def table(report: BenchReport) -> Table:
    """The cases as a rich table; latencies in ms."""
    t = Table(title="Gateway overhead against a direct call (sim node, instant profile)",
              caption=f"{ADDED_P99_MEANS}. Latency: time to the last byte, in ms. CPU: "
                      "per request through the gateway, of the gateway, the node and the "
                      "load generator.")
    for name in ("conc.", "stream", "p50\ndirect", "p50\ngateway", "p50\nadded",
                 "p99\ndirect", "p99\ngateway", "p99\nadded", "rps\ndirect", "rps\ngateway",
                 "CPU µs/req\ngw·node·lg", "errors"):
        t.add_column(name, justify="right")
    for c in report.cases:
        t.add_row(
            str(c.concurrency), "yes" if c.stream else "no", _ms(c.direct.p50_ms),
            _ms(c.gateway.p50_ms), _ms(c.added_p50_ms), _ms(c.direct.p99_ms),
            _ms(c.gateway.p99_ms), _ms(c.added_p99_ms), f"{c.direct.rps:,.0f}",
            f"{c.gateway.rps:,.0f}", _cpu(c.gateway.cpu_us),
            f"[bold red]{c.error_count}[/]" if c.error_count else "0")
    return t


def summary(report: BenchReport) -> list[str]:
    """What to print under the table: the machine's state and each goal's verdict."""
    before, after = report.meta.get("load_average_before"), report.meta.get("load_average_after")
    lines = [f"{report.meta.get('cpu_count')} CPUs, 1-minute load average {_load(before)} "
             f"before and {_load(after)} after (other work on the machine shows in the "
             f"figures); {report.meta.get('wall_s')} s in all"]
    verdicts = {True: "[green]met[/]", False: "[yellow]missed[/]", None: "not measured"}
    lines += [f"goal: {goal}: {verdicts[met]}" for goal, met in report.goals()]
    return lines


def _load(values: list[float] | None) -> str:
    return f"{values[0]:.2f}" if values else "unknown"


TABLE_WIDTH = 124  # wide enough for every column; a narrower terminal wraps lines


def _cpu(spent: dict[str, float]) -> str:
    return "·".join(f"{spent.get(name, float('nan')):.0f}"
                    for name in ("gateway", "node", "loadgen"))


def _ms(value: float) -> str:
    return f"{value:.3f}"
