"""The simulated cluster: simulated nodes behind the gateway's very own `Router`.

The gateway here is exactly the product's request lifecycle, `Router(Scheduler(strategy),
ClusterView, AdmissionQueue or None)`, wrapped with events instead of sockets, as
`gateway.proxy` wraps it with futures:

- a request arrives -> `router.arrive` -> dispatched to a node (after `network_s`), or held
  in the admission queue until `router.finished`/`router.tick` hands it out;
- a node that refuses before the first byte (503 queue full, model too large) sends it to
  the decision's next fallback through `router.failed_over`, up to `max_attempts` nodes, as
  the real gateway does; then `router.finished(ok=False)`;
- the end of a request calls `router.finished` with what the real gateway measures (TTFT and
  duration from the arrival at the gateway, the wait before it was sent to its node, the
  node's prefill and decode seconds and its wait for a slot or load, which the `sim` engine
  reports as Ollama's load_duration), and the requests it returns are dispatched;
- held requests are re-checked every `TICK_S` while any wait (capacity also frees through
  telemetry), and a request whose first token has not come within `ttft_timeout` fails.

The view learns as in the gateway: its own in-flight counts at once (the router does that),
plus a telemetry report from every node every `telemetry_s` of virtual time. Reports are
staggered over ten phases of the period (real health checks are not synchronised) and a node
whose state is the same as at its last report is skipped: the report would be a no-op (only
the view's `updated_at` would move).
All nodes are healthy; there is no fault schedule yet.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ollamamax.config import GatewayConfig, NodeConfig, SchedulerConfig
from ollamamax.errors import ConfigError, EngineError, ModelNotFound, Unavailable
from ollamamax.scheduler import ClusterView, RouteRequest, Scheduler
from ollamamax.scheduler.prefix import BLOCK_CHARS
from ollamamax.scheduler.prewarm import Prewarmer
from ollamamax.scheduler.queue import AdmissionQueue, QueueFull
from ollamamax.scheduler.router import Dispatch, Router
from ollamamax.sim import timing
from ollamamax.sim.events import EventLoop
from ollamamax.sim.node import FAILED, NEW, QUEUED, WAITING, Job, SimNode
from ollamamax.sim.workloads import SimRequest, Workload

TICK_S = 0.05  # as gateway.proxy: held requests are re-checked this often while any wait
PHASES = 10  # telemetry reports are spread over this many phases of the period
# What the gateway's prefix index remembers per node, in tokens: its default 4,096 text blocks
# of BLOCK_CHARS characters, at about four characters a token.
GATEWAY_PREFIX_TOKENS = 4096 * BLOCK_CHARS // timing.CHARS_PER_TOKEN
QUEUED_STRATEGIES = frozenset({"intelligent"})  # ours holds requests at the gateway


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    nodes: int = 4
    profiles: tuple[tuple[str, int], ...] = (("gpu-8b", 1),)  # a mix: (profile, weight)
    slots: int = NodeConfig().num_parallel  # per loaded model (OLLAMA_NUM_PARALLEL)
    max_loaded: int = NodeConfig().max_loaded
    max_queue: int = NodeConfig().max_queue
    keep_alive: float = NodeConfig().keep_alive
    num_ctx: int = NodeConfig().num_ctx  # per slot: a runner caches num_ctx x slots tokens
    telemetry_s: float = 1.0
    network_s: float = 0.0  # one way, gateway to node
    gateway_queue: bool | None = None  # None: only for the strategies that queue (ours)
    gateway_prefix_tokens: int = GATEWAY_PREFIX_TOKENS  # the prefix index's memory per node
    max_attempts: int = GatewayConfig().max_attempts
    ttft_timeout: float = GatewayConfig().ttft_timeout
    max_waiting: int = SchedulerConfig().max_waiting
    max_waiting_per_key: int = SchedulerConfig().max_waiting_per_key
    seed: int = 0
    warmup_s: float = 0.0  # requests arriving earlier are served but not counted
    prewarm: bool = False  # load models ahead of forecast demand (`scheduler.prewarm`)

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.slots < 1 or self.max_loaded < 1 or self.num_ctx < 1:
            raise ConfigError("nodes, slots, max loaded models and num_ctx must be >= 1")
        if self.telemetry_s <= 0 or self.network_s < 0 or self.max_attempts < 1:
            raise ConfigError("telemetry period must be > 0, network latency >= 0, "
                              "attempts >= 1")
        for name, weight in self.profiles:
            timing.get_profile(name)
            if weight < 1:
                raise ConfigError(f"node profile {name}: its count must be >= 1")

    def queues(self, strategy: str) -> bool:
        if self.gateway_queue is None:
            return strategy in QUEUED_STRATEGIES
        return self.gateway_queue


def parse_profiles(text: str) -> tuple[tuple[str, int], ...]:
    """``gpu-8b`` or a mix ``gpu-8b:12,cpu-small:4`` (counts, scaled to the node count)."""
    out = []
    for entry in text.split(","):
        name, _, count = entry.strip().partition(":")
        try:
            weight = int(count) if count else 1
        except ValueError:
            raise ConfigError(f"node profile {entry!r} must look like NAME or NAME:COUNT") from None
        timing.get_profile(name)
        out.append((name, weight))
    if not out:
        raise ConfigError("--node-profile names no profile")
    return tuple(out)


def node_profiles(config: ClusterConfig) -> list[timing.Profile]:
    """One profile per node: counts proportional to the mix, kinds interleaved evenly."""
    weights = np.array([w for _, w in config.profiles], dtype=float)
    share = weights / weights.sum() * config.nodes
    counts = np.floor(share).astype(int)
    for k in np.argsort(-(share - counts), kind="stable")[: config.nodes - counts.sum()]:
        counts[k] += 1
    # node j of kind k sits at position (j + 0.5) / count_k: kinds spread over the numbers
    slots = sorted(((j + 0.5) / c, k) for k, c in enumerate(counts) for j in range(c))
    return [timing.get_profile(config.profiles[k][0]) for _, k in slots]


def capacity(config: ClusterConfig, prompt_tokens: float, output_tokens: float) -> float:
    """Requests per second the cluster serves at best, for requests of these mean sizes.

    Every node runs all its slots of one model, the whole prompt prefilled (no prefix cache),
    no model loads: slots / (TTFT + decode time at that concurrency), summed over nodes. A
    workload with prefix hits or several resident models per node can do more; cold loads
    cost it some. `--load 0.8` means 80% of this figure.
    """
    total = 0.0
    for profile in node_profiles(config):
        p = profile.sized(config.slots)
        c = config.slots
        service = timing.ttft(p, round(prompt_tokens), c) \
            + max(output_tokens - 1, 0) * timing.time_between_tokens(p, c)
        total += c / max(service, 1e-3)
    return total


@dataclass(slots=True)
class Tally:
    """What one run measured."""

    arrived: int = 0
    finished: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    failovers: int = 0
    ttft: np.ndarray = field(default_factory=lambda: np.zeros(0))
    e2e: np.ndarray = field(default_factory=lambda: np.zeros(0))
    last_end: float = 0.0
    # per request, for statistics over the measured window (after any warm-up)
    node: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    prompt: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cached: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


class Simulation:
    """One strategy against one workload on a fresh cluster."""

    def __init__(self, workload: Workload, config: ClusterConfig, strategy: str | Any,
                 routes: list[RouteRequest] | None = None) -> None:
        """`strategy`: a registered name, or a strategy object (to try a variant)."""
        self.workload = workload
        self.config = config
        scheduler = Scheduler(strategy, seed=config.seed)
        self.strategy = scheduler.name
        self.loop = EventLoop()
        self.routes = routes if routes is not None else make_routes(workload)
        n = config.nodes
        self.view = ClusterView(capacity=n, prefix_capacity=max(
            1, config.gateway_prefix_tokens // workload.block_tokens))
        queue = AdmissionQueue(max_waiting=config.max_waiting,
                               max_per_key=config.max_waiting_per_key) \
            if config.queues(self.strategy) else None
        self.prewarmer = Prewarmer() if config.prewarm else None
        self.prewarm_before = (0, 0, 0)  # its (loads, used, wasted) when the warm-up ended
        self.router = Router(scheduler, self.view, queue, self.prewarmer)
        kv_tokens = config.num_ctx * config.slots
        self.nodes = [SimNode(i, profile, self.loop, store=workload.models, slots=config.slots,
                              max_loaded=config.max_loaded, max_queue=config.max_queue,
                              keep_alive=config.keep_alive, kv_tokens=kv_tokens,
                              block_tokens=workload.block_tokens, done=self._node_done)
                      for i, profile in enumerate(node_profiles(config))]
        count = len(workload.requests)
        self.tally = Tally(ttft=np.full(count, np.nan), e2e=np.full(count, np.nan),
                           node=np.full(count, -1, np.int32), prompt=np.zeros(count, np.int64),
                           cached=np.zeros(count, np.int64))
        self.sent_at = np.zeros(count)  # per request: when the gateway sent it to its node
        self.open = len(workload.requests)  # requests not yet arrived, or not yet settled
        self.ticking = False
        self.progress: Callable[[int], None] | None = None
        self._join()

    def _join(self) -> None:
        """Nodes register and report once before the first request: the gateway knows them."""
        view = self.view
        for node in self.nodes:
            i = view.add(f"node-{node.index}", f"sim://node-{node.index}",
                         labels=(f"profile={node.profile.name}",), mem_total=node.memory)
            view.set_health(i, True, 0.0)
            view.update(i, now=0.0, **node.telemetry())
            node.dirty = False
            node.reported = node.signature()
        buckets = [self.nodes[b::PHASES] for b in range(PHASES)]
        for b, bucket in enumerate(buckets):
            if bucket:
                self.loop.at(self.config.telemetry_s * (b + 1) / PHASES, self._report, bucket)

    # -- running ---------------------------------------------------------------------------

    def run(self, progress: Callable[[int], None] | None = None) -> Tally:
        """Every request, until each has finished or failed."""
        self.progress = progress
        self.start()
        self.loop.run(until=lambda: self.open == 0)
        return self.tally

    def start(self) -> None:
        """Schedule the first arrival (`run` does it; tests may step the loop themselves)."""
        if self.workload.requests:
            self.loop.at(self.workload.requests[0].arrival, self._arrive, 0)
            if self.prewarmer is not None:
                self.loop.after(self.prewarmer.interval_s, self._prewarm)
                self.loop.at(self.config.warmup_s, self._prewarm_baseline)

    def _arrive(self, index: int) -> None:
        requests = self.workload.requests
        if index + 1 < len(requests):
            self.loop.at(requests[index + 1].arrival, self._arrive, index + 1)
        now = self.loop.now
        tally = self.tally
        tally.arrived += 1
        job = Job(index, requests[index], self.routes[index])
        try:
            outcome = self.router.arrive(job.route, now, job)
        except QueueFull as exc:
            self._fail(job, f"gateway queue full ({exc.status})")
            return
        except (ModelNotFound, Unavailable):
            self._fail(job, "no node for the model")
            return
        if isinstance(outcome, Dispatch):
            self._send(job, outcome)
        else:
            job.state = WAITING
            job.waiting = outcome
            self._watch(job)
            self._ensure_ticker()

    def _send(self, job: Job, dispatch: Dispatch) -> None:
        job.dispatch = dispatch
        job.waiting = None
        job.state = NEW  # on its way to the node
        job.node = dispatch.decision.node
        job.attempts = 1
        self.sent_at[job.index] = self.loop.now
        self._to_node(job)

    def _to_node(self, job: Job) -> None:
        self._over_network(self._at_node, job)

    def _over_network(self, callback: Callable[[Any], None], arg: Any) -> None:
        """Deliver a message between the gateway and a node, after the one-way latency."""
        if self.config.network_s > 0:
            self.loop.after(self.config.network_s, callback, arg)
        else:
            callback(arg)

    def _at_node(self, job: Job) -> None:
        try:
            self.nodes[job.node].submit(job)
        except EngineError as exc:  # 503 queue full, or a model that cannot fit
            why = "node queue full (503)" if exc.status == 503 else "model too large"
            self._over_network(self._refused, (job, why))
            return
        if job.state == QUEUED:  # waits in the node's queue or for a load
            self._watch(job)

    def _refused(self, event: tuple[Job, str]) -> None:
        """The node failed before the first byte: the next fallback, as the gateway does."""
        job, reason = event
        dispatch = job.dispatch
        now = self.loop.now
        if job.attempts < self.config.max_attempts:
            if job.fallbacks is None:
                job.fallbacks = iter(dispatch.decision.fallbacks())
            nxt = next(job.fallbacks, None)
            if nxt is not None:
                self.router.failed_over(dispatch, job.node, nxt, now)
                self.tally.failovers += 1
                job.node = nxt
                job.attempts += 1
                self.sent_at[job.index] = now
                self._to_node(job)
                return
        self._fail(job, reason)
        self._deliver(self.router.finished(job.node, dispatch.model, now, ok=False))

    def _deliver(self, dispatches: list[Dispatch]) -> None:
        for dispatch in dispatches:
            job = dispatch.ticket
            if job.state == WAITING:
                self._send(job, dispatch)
            else:  # it timed out in the very instant: give the slot back
                self._deliver(self.router.released(dispatch.decision.node, dispatch.model,
                                                   self.loop.now))

    # -- endings ---------------------------------------------------------------------------

    def _node_done(self, job: Job) -> None:
        if job.preload is not None:
            self._over_network(self._preloaded, job)
        else:
            self._over_network(self._answered, job)

    def _preloaded(self, job: Job) -> None:
        self._deliver(self.router.preloaded(job.preload, self.loop.now, ok=True))

    def _answered(self, job: Job) -> None:
        """The last chunk reached the gateway: the outcome as the gateway measures it."""
        now = self.loop.now
        request = job.request
        ttft = job.first + self.config.network_s - request.arrival  # the first chunk travels too
        sent = float(self.sent_at[job.index])
        # before its prefill the node waited for a slot or a load: the engine's load_duration
        waited_at_node = max(job.first - job.prefill_s - (sent + self.config.network_s), 0.0)
        tally = self.tally
        tally.finished += 1
        tally.ttft[job.index] = ttft
        tally.e2e[job.index] = now - request.arrival
        tally.node[job.index] = job.node
        tally.prompt[job.index] = request.prompt_tokens
        tally.cached[job.index] = job.cached
        tally.last_end = max(tally.last_end, now)
        self._settled()
        self._deliver(self.router.finished(
            job.node, job.dispatch.model, now, ok=True, ttft=ttft,
            # the slot's time (prefill start to last token), not the wait before it
            duration=job.ended - (job.first - job.prefill_s), prompt_tokens=request.prompt_tokens,
            cached_tokens=job.cached,
            output_tokens=request.output_tokens, prefill_s=job.prefill_s,
            decode_s=job.ended - job.first, stream=True, waited_s=sent - request.arrival,
            load_s=waited_at_node))

    def _fail(self, job: Job, reason: str) -> None:
        job.state = FAILED
        self.tally.failed[reason] += 1
        self.tally.last_end = max(self.tally.last_end, self.loop.now)
        self._settled()

    def _settled(self) -> None:
        self.open -= 1
        if self.progress is not None and self.open % 1000 == 0:
            self.progress(len(self.workload.requests) - self.open)

    def _watch(self, job: Job) -> None:
        """A request that waits gets a deadline: the gateway's time-to-first-token timeout."""
        if not job.watched and math.isfinite(self.config.ttft_timeout):
            job.watched = True
            self.loop.at(job.request.arrival + self.config.ttft_timeout, self._deadline, job)

    def _deadline(self, job: Job) -> None:
        if job.state == WAITING:
            self.router.cancel(job.waiting)
            self._fail(job, "first token timeout")
        elif job.state == QUEUED and self.nodes[job.node].cancel(job):
            self._fail(job, "first token timeout")
            self._deliver(self.router.finished(job.node, job.dispatch.model, self.loop.now,
                                               ok=False))

    # -- periodic work ---------------------------------------------------------------------

    def _ensure_ticker(self) -> None:
        if not self.ticking:
            self.ticking = True
            self.loop.after(TICK_S, self._tick)

    def _tick(self, _: object = None) -> None:
        self._deliver(self.router.tick(self.loop.now))
        queue = self.router.queue
        if queue is not None and len(queue):
            self.loop.after(TICK_S, self._tick)
        else:
            self.ticking = False

    def _prewarm(self, _: object = None) -> None:
        """Send the loads the prewarmer plans (Ollama's empty request), while requests come."""
        assert self.prewarmer is not None
        if self.open == 0:
            return
        now = self.loop.now
        for preload in self.router.prewarm(now):
            model = self.view.model_names[preload.model]
            job = Job(-1, SimRequest(now, model, 1, 1), None, preload)
            job.node = preload.node
            self._over_network(self._preload_at_node, job)
        self.loop.after(self.prewarmer.interval_s, self._prewarm)

    def _prewarm_baseline(self, _: object = None) -> None:
        """The prewarm counts at the end of the warm-up, which the figures start after."""
        p = self.prewarmer
        assert p is not None
        self.prewarm_before = (p.loads, p.used, p.wasted)

    def _preload_at_node(self, job: Job) -> None:
        try:
            self.nodes[job.node].submit(job)
        except EngineError:  # queue full, or too large after all: the load did not happen
            self._deliver(self.router.preloaded(job.preload, self.loop.now, ok=False))

    def _report(self, bucket: list[SimNode]) -> None:
        """Telemetry from the nodes of one phase that changed since their last report."""
        now = self.loop.now
        update = self.view.update
        for node in bucket:
            if node.dirty:
                node.dirty = False
                signature = node.signature()
                if signature != node.reported:  # busy and idle again since: nothing to say
                    node.reported = signature
                    update(node.index, now=now, **node.telemetry())
        self.loop.after(self.config.telemetry_s, self._report, bucket)


def make_routes(workload: Workload) -> list[RouteRequest]:
    """What the gateway would know of each request (built once, shared by every run)."""
    return [RouteRequest(r.model, prompt_tokens=r.prompt_tokens, output_tokens=r.output_tokens,
                         prefix=r.prefix) for r in workload.requests]

