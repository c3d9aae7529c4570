"""Which models a node holds in memory, its slots and its queue: Ollama's scheduler rules, pure.

No I/O and no clock: every call takes ``now`` and returns the actions the caller must carry
out (`Load`, `Start`, `Unload`). The asyncio engines (`llamacpp`, `sim`) and the cluster
simulator drive the very same state machine, so a simulated node queues, loads and evicts
exactly as a real one.

The rules follow Ollama (server/sched.go and its FAQ):

- each loaded model serves ``num_parallel`` requests at once; more wait for a slot;
- at most ``max_loaded`` models are resident; to load another, the idle model whose keep-alive
  ends soonest is unloaded; when none is idle, the load waits;
- at most ``max_queue`` requests wait in all; one more is refused (HTTP 503);
- after its last request a model stays for its keep-alive (default 5 minutes, ``0`` unloads at
  once, negative keeps it forever), then it is unloaded;
- requests wait in arrival order; a waiting request never blocks one for another model that
  can start now.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from ollamamax.errors import EngineOverloaded

DEFAULT_KEEP_ALIVE = 300.0
FOREVER = math.inf


@dataclass(slots=True)
class Ticket:
    """One request for a model. `keep_alive` is in seconds (``inf`` = forever)."""

    model: str
    keep_alive: float = DEFAULT_KEEP_ALIVE
    size: int = 0
    id: int = field(default_factory=itertools.count().__next__)


@dataclass(frozen=True, slots=True)
class Load:
    model: str


@dataclass(frozen=True, slots=True)
class Start:
    ticket: Ticket


@dataclass(frozen=True, slots=True)
class Unload:
    model: str
    reason: str


Action = Load | Start | Unload


@dataclass(slots=True)
class Runner:
    """A model resident (or loading) on the node."""

    model: str
    size: int
    slots: int
    loading: bool = True
    busy: int = 0
    expires_at: float = FOREVER
    last_used: float = 0.0

    @property
    def idle(self) -> bool:
        return not self.loading and self.busy == 0


class Residency:
    def __init__(self, *, num_parallel: int = 1, max_loaded: int = 3, max_queue: int = 512):
        if num_parallel < 1 or max_loaded < 1 or max_queue < 0:
            raise ValueError("num_parallel and max_loaded must be >= 1, max_queue >= 0")
        self.num_parallel = num_parallel
        self.max_loaded = max_loaded
        self.max_queue = max_queue
        self.runners: OrderedDict[str, Runner] = OrderedDict()
        self.waiting: deque[Ticket] = deque()

    # -- queries ---------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    def waiting_for(self, model: str) -> int:
        return sum(1 for t in self.waiting if t.model == model)

    def next_expiry(self) -> float | None:
        """When `expire` next has work, or None."""
        times = [r.expires_at for r in self.runners.values() if r.idle and r.expires_at < FOREVER]
        return min(times) if times else None

    # -- events ----------------------------------------------------------------------------

    def submit(self, ticket: Ticket, now: float) -> list[Action]:
        """A request arrives. Raises `EngineOverloaded` when the queue is full."""
        runner = self.runners.get(ticket.model)
        if runner is not None and not runner.loading and runner.busy < runner.slots:
            return [self._start(runner, ticket, now)]
        if len(self.waiting) >= self.max_queue:
            raise EngineOverloaded("server busy, please try again.  maximum pending requests exceeded")
        self.waiting.append(ticket)
        return self._dispatch(now)

    def cancel(self, ticket: Ticket, now: float) -> list[Action]:
        """A waiting request gave up (client went away)."""
        try:
            self.waiting.remove(ticket)
        except ValueError:
            return []
        return self._dispatch(now)

    def loaded(self, model: str, now: float) -> list[Action]:
        """A load the caller started has finished."""
        runner = self.runners[model]
        runner.loading = False
        runner.last_used = now
        return self._dispatch(now)

    def load_failed(self, model: str, now: float) -> tuple[list[Ticket], list[Action]]:
        """A load failed: its waiting requests are returned to be failed by the caller."""
        self.runners.pop(model, None)
        failed = [t for t in self.waiting if t.model == model]
        self.waiting = deque(t for t in self.waiting if t.model != model)
        return failed, self._dispatch(now)

    def finish(self, ticket: Ticket, now: float) -> list[Action]:
        """A started request is done; its model stays for the ticket's keep-alive."""
        runner = self.runners[ticket.model]
        runner.busy -= 1
        runner.last_used = now
        runner.expires_at = now + ticket.keep_alive if ticket.keep_alive >= 0 else FOREVER
        actions: list[Action] = []
        if runner.idle and ticket.keep_alive == 0 and not self.waiting_for(runner.model):
            actions.append(self._unload(runner.model, "keep_alive 0"))
        return actions + self._dispatch(now)

    def touch(self, model: str, keep_alive: float, now: float) -> list[Action]:
        """Set a loaded model's keep-alive without running anything (Ollama's empty request)."""
        runner = self.runners.get(model)
        if runner is None or runner.loading:
            return []
        runner.expires_at = now + keep_alive if keep_alive >= 0 else FOREVER
        if keep_alive == 0 and runner.idle:
            return [self._unload(model, "keep_alive 0"), *self._dispatch(now)]
        return []

    def expire(self, now: float) -> list[Action]:
        """Unload idle models whose keep-alive has ended."""
        actions: list[Action] = [
            self._unload(r.model, "keep-alive expired")
            for r in list(self.runners.values())
            if r.idle and r.expires_at <= now
        ]
        return actions + self._dispatch(now) if actions else actions

    # -- internals -------------------------------------------------------------------------

    def _start(self, runner: Runner, ticket: Ticket, now: float) -> Start:
        runner.busy += 1
        runner.last_used = now
        runner.expires_at = FOREVER  # a model never expires while it serves
        self.runners.move_to_end(runner.model)
        return Start(ticket)

    def _unload(self, model: str, reason: str) -> Unload:
        del self.runners[model]
        return Unload(model, reason)

    def _dispatch(self, now: float) -> list[Action]:
        """Start what can start and load what can load, in arrival order."""
        actions: list[Action] = []
        still: deque[Ticket] = deque()
        loads_blocked = False
        for ticket in self.waiting:
            runner = self.runners.get(ticket.model)
            if runner is None and not loads_blocked:
                evicted = self._make_room()
                if evicted is None:
                    loads_blocked = True  # later loads wait behind this one, in order
                else:
                    actions.extend(evicted)
                    runner = self.runners[ticket.model] = Runner(
                        ticket.model, ticket.size, self.num_parallel
                    )
                    actions.append(Load(ticket.model))
            if runner is not None and not runner.loading and runner.busy < runner.slots:
                actions.append(self._start(runner, ticket, now))
            else:
                still.append(ticket)
        self.waiting = still
        return actions

    def _make_room(self) -> list[Action] | None:
        """Unload an idle model if the node is full; None when nothing can be unloaded."""
        if len(self.runners) < self.max_loaded:
            return []
        idle = [r for r in self.runners.values() if r.idle]
        if not idle:
            return None
        victim = min(idle, key=lambda r: (r.expires_at, r.last_used))
        return [self._unload(victim.model, "room for another model")]
