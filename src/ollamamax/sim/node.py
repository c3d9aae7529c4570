"""A simulated Ollama node in virtual time: Ollama's residency rules, a timing profile, KV caches.

The node runs the very state machine the real engines run (`node.residency.Residency`: slots,
the queue and its 503, loads, eviction, keep-alive) and the `sim` engine's latency model
(`sim.timing`), driven by the event loop instead of sleeps. A request costs three events:
its prefill ends (first token), its decode ends, and, for a cold model, the load ends.

Timing, as the real-time `sim` engine does it:

- time to first token at the node = `timing.ttft(uncached prompt tokens, sequences)` where
  `sequences` counts the requests prefilling or decoding on the node (over all its models),
  this one included, when the prefill starts; it is not revised later (the engine sleeps it
  in one go). At least the last prompt token is evaluated, as in the engine;
- decoding emits `output - 1` tokens, each taking `time_between_tokens(sequences)`. The
  engine re-reads `sequences` at every token, so here a decode is piecewise: when the count
  changes, every decoding request on the node banks the tokens done so far and its end is
  rescheduled at the new speed (a few requests per node, and only when the factor changes);
- a prefix hit is looked up in the runner's `PrefixCache` when the prefill starts; the
  prompt's blocks are inserted when the first token comes out, and a chat's answer blocks
  when the answer is done (llama.cpp keeps the generated tokens' KV too);
- a cold load takes `timing.load_time(size)`; the runner's cache dies with its model;
- memory: a model larger than the node's memory is refused (an error before the first byte,
  so the gateway fails over); residency itself counts models (`max_loaded`), not bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ollamamax.errors import EngineError
from ollamamax.node.residency import FOREVER, Load, Residency, Start, Ticket
from ollamamax.scheduler.view import LoadedModel
from ollamamax.sim import timing
from ollamamax.sim.events import EventLoop
from ollamamax.sim.workloads import SimRequest

# a job's states
NEW, WAITING, QUEUED, PREFILL, DECODE, DONE, FAILED = range(7)


class ModelTooLarge(EngineError):
    """The model does not fit in the node's memory at all."""


class Job:
    """One request's trip through the simulated cluster (per strategy run)."""

    __slots__ = ("attempts", "cached", "dispatch", "ended", "epoch", "fallbacks", "first",
                 "index", "left", "node", "prefill_s", "preload", "request", "route", "since",
                 "state", "tbt", "ticket", "waiting", "watched")

    def __init__(self, index: int, request: SimRequest, route: Any, preload: Any = None) -> None:
        self.index = index
        self.preload = preload  # a prewarm load (Ollama's empty request), not a request
        self.request = request
        self.route = route  # the RouteRequest the gateway decides on
        self.state = NEW
        self.dispatch: Any = None
        self.waiting: Any = None  # the admission queue's entry while held at the gateway
        self.fallbacks: Any = None
        self.node = -1
        self.attempts = 0
        self.ticket: Ticket | None = None
        self.watched = False
        self.first = 0.0  # virtual time of the first token, at the node
        self.ended = 0.0  # and of the last
        self.cached = 0
        self.prefill_s = 0.0
        self.left = 0.0  # tokens still to decode, as of `since`
        self.tbt = 0.0
        self.since = 0.0
        self.epoch = 0  # bumped when the decode end is rescheduled; stale events are ignored


class SimNode:
    __slots__ = (
        "block_tokens",
        "cached_tokens",
        "caches",
        "decoding",
        "dirty",
        "done",
        "expiry_at",
        "index",
        "keep_alive",
        "kv_blocks",
        "load_times",
        "loop",
        "memory",
        "prewarm_load_times",
        "profile",
        "prompt_tokens",
        "reported",
        "residency",
        "sequences",
        "served",
        "store",
        "store_items",
        "tickets",
        "variable",
    )

    def __init__(self, index: int, profile: timing.Profile, loop: EventLoop, *,
                 store: dict[str, int], slots: int = 1, max_loaded: int = 3,
                 max_queue: int = 512, keep_alive: float = 300.0, kv_tokens: int = 4096,
                 block_tokens: int = 64, done: Callable[[Job], None]) -> None:
        self.index = index
        self.profile = profile.sized(slots)
        self.loop = loop
        self.residency = Residency(num_parallel=slots, max_loaded=max_loaded,
                                   max_queue=max_queue)
        self.store = store  # model -> size in bytes: what the node has on disk
        self.store_items = list(store.items())
        self.memory = self.profile.memory_bytes
        self.keep_alive = keep_alive
        self.block_tokens = block_tokens
        self.kv_blocks = max(kv_tokens // block_tokens, 0)
        self.done = done  # told when a job ends (ok or failed at the node)
        self.caches: dict[str, timing.PrefixCache] = {}
        self.tickets: dict[int, Job] = {}
        self.decoding: set[Job] = set()
        self.sequences = 0
        # only a profile that slows down with concurrency needs decodes rescheduled
        self.variable = (self.profile.slowdown_at_max > 1
                         and (self.profile.max_sequences or 1) > 1)
        self.expiry_at: float | None = None
        self.dirty = True  # changed since the last telemetry report
        self.reported: tuple[Any, ...] = ()  # the signature of the last report
        self.served = 0
        self.load_times: list[float] = []  # when each cold load began (a request waits)
        self.prewarm_load_times: list[float] = []  # and each load a prewarm asked for
        self.prompt_tokens = 0
        self.cached_tokens = 0

    # -- the gateway's side ----------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Take `job`; raises `EngineOverloaded` (503, queue full) or `ModelTooLarge`."""
        model = job.request.model
        size = self.store[model]
        if size > self.memory:
            raise ModelTooLarge(f"model {model} needs {size} bytes; the node has {self.memory}")
        ticket = Ticket(model, self.keep_alive, size)
        actions = self.residency.submit(ticket, self.loop.now)
        job.ticket = ticket
        job.state = QUEUED
        self.tickets[ticket.id] = job
        self.dirty = True
        self._apply(actions)

    def cancel(self, job: Job) -> bool:
        """Withdraw a job still waiting here (for a slot or a load); False if it started."""
        if job.state != QUEUED or job.ticket not in self.residency.waiting:
            return False
        del self.tickets[job.ticket.id]
        self.dirty = True
        self._apply(self.residency.cancel(job.ticket, self.loop.now))
        return True

    def signature(self) -> tuple[Any, ...]:
        """What telemetry would report, in short: equal signatures mean equal reports."""
        r = self.residency
        waiting = tuple(t.model for t in r.waiting) if r.waiting else ()
        return (waiting, *((m, run.busy, run.loading) for m, run in r.runners.items()))

    @property
    def cold_loads(self) -> int:
        return len(self.load_times)

    def telemetry(self) -> dict[str, Any]:
        """What the node's /telemetry says, as keyword arguments of `ClusterView.update`."""
        r = self.residency
        loaded = [LoadedModel(m, run.slots, run.busy, r.waiting_for(m) if r.waiting else 0,
                              run.size)
                  for m, run in r.runners.items() if not run.loading]
        used = sum(run.size for run in r.runners.values())
        return {"models": self.store_items, "loaded": loaded, "queue_depth": len(r.waiting),
                "mem_free": self.memory - used, "mem_total": self.memory,
                "max_loaded": r.max_loaded, "num_parallel": r.num_parallel,
                "prefix_blocks": self.kv_blocks * max(1, len(loaded))}

    # -- residency actions -----------------------------------------------------------------

    def _apply(self, actions: list[Any]) -> None:
        for action in actions:
            if type(action) is Start:
                self._start(self.tickets.pop(action.ticket.id))
            elif type(action) is Load:
                first = next(t for t in self.residency.waiting if t.model == action.model)
                job = self.tickets[first.id]
                times = self.prewarm_load_times if job.preload is not None else self.load_times
                times.append(self.loop.now)
                size = self.store[action.model]
                self.caches[action.model] = timing.PrefixCache(self.kv_blocks)
                self.loop.after(timing.load_time(self.profile, size), self._loaded, action.model)
            else:  # Unload: the runner's KV cache goes with it
                self.caches.pop(action.model, None)

    def _loaded(self, model: str) -> None:
        self.dirty = True
        self._apply(self.residency.loaded(model, self.loop.now))

    # -- a request's life on the node ------------------------------------------------------

    def _start(self, job: Job) -> None:
        if job.preload is not None:  # loaded: the empty request is answered at once
            self._preloaded(job)
            return
        request = job.request
        job.state = PREFILL
        self.sequences += 1
        if self.variable:
            self._rescale(self.sequences - 1)
        cache = self.caches[request.model]
        matched = cache.match(request.prefix) if request.prefix else 0
        prompt = request.prompt_tokens
        job.cached = min(matched * self.block_tokens, prompt - 1)
        job.prefill_s = timing.ttft(self.profile, prompt - job.cached, self.sequences)
        self.prompt_tokens += prompt
        self.cached_tokens += job.cached
        self.loop.after(job.prefill_s, self._first_token, job)

    def _first_token(self, job: Job) -> None:
        now = self.loop.now
        request = job.request
        job.first = now
        job.state = DECODE
        if request.prefix:
            self.caches[request.model].insert(request.prefix)
        job.left = float(request.output_tokens - 1)
        job.tbt = timing.time_between_tokens(self.profile, self.sequences)
        job.since = now
        if self.variable:
            self.decoding.add(job)
        self.loop.at(now + job.left * job.tbt, self._finished, (job, job.epoch))

    def _rescale(self, before: int) -> None:
        """`sequences` changed from `before`: decodes in progress change speed."""
        if not self.decoding:
            return
        tbt = timing.time_between_tokens(self.profile, self.sequences)
        if tbt == timing.time_between_tokens(self.profile, before):
            return
        now = self.loop.now
        for job in self.decoding:
            job.left = max(job.left - (now - job.since) / job.tbt, 0.0)
            job.since, job.tbt = now, tbt
            job.epoch += 1
            self.loop.at(now + job.left * tbt, self._finished, (job, job.epoch))

    def _finished(self, event: tuple[Job, int]) -> None:
        job, epoch = event
        if epoch != job.epoch:
            return  # rescheduled since
        request = job.request
        self.decoding.discard(job)
        self.sequences -= 1
        if self.variable:
            self._rescale(self.sequences + 1)
        if request.answer_prefix:
            self.caches[request.model].insert(request.answer_prefix)
        assert job.ticket is not None
        actions = self.residency.finish(job.ticket, self.loop.now)
        job.state = DONE
        job.ended = self.loop.now
        self.served += 1
        self.dirty = True
        self._apply(actions)
        self._watch_expiry(request.model)
        self.done(job)

    def _preloaded(self, job: Job) -> None:
        assert job.ticket is not None
        job.state = DONE
        job.ended = self.loop.now
        self.dirty = True
        self._apply(self.residency.finish(job.ticket, self.loop.now))
        self._watch_expiry(job.request.model)
        self.done(job)

    # -- keep-alive ------------------------------------------------------------------------

    def _watch_expiry(self, model: str) -> None:
        """Make sure an event wakes the node when an idle model's keep-alive ends."""
        runner = self.residency.runners.get(model)
        if runner is None or not runner.idle or runner.expires_at == FOREVER:
            return
        at = runner.expires_at
        if self.expiry_at is None or at < self.expiry_at:
            self.expiry_at = at
            self.loop.at(at, self._expire)

    def _expire(self, _: Any = None) -> None:
        now = self.loop.now
        if self.expiry_at is not None and self.expiry_at > now:
            return  # a stale wake-up: an earlier one was scheduled after it
        self.expiry_at = None
        actions = self.residency.expire(now)
        if actions:
            self.dirty = True
            self._apply(actions)
        nxt = self.residency.next_expiry()
        if nxt is not None:
            self.expiry_at = nxt
            self.loop.at(nxt, self._expire)
