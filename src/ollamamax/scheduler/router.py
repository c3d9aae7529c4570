"""Admission, decision and bookkeeping: the request lifecycle the gateway and simulator share.

    arrive(request, now)  -> Dispatch (send it now) | Waiting (held in the admission queue)
    failed_over(dispatch, failed, to, now)   the node failed before the first byte; next one
    copied(dispatch, node, now)        a hedged second copy goes to `node` as well
    finished(node, model, now, ...)    it ended -> waiting requests that can start now
    tick(now)                          periodic re-check (capacity freed elsewhere)
    prewarm(now) / preloaded(...)      loads ahead of demand, with a `Prewarmer`

A Dispatch is counted as started on its decision's node when it is made, so the next
decision already sees that slot taken.

The gateway wraps this with sockets and futures, the cluster simulator with events; neither
decides anything itself, so a routing gain measured in simulation is a gain of the product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ollamamax.scheduler.decide import Scheduler
from ollamamax.scheduler.prewarm import Preload, Prewarmer
from ollamamax.scheduler.queue import AdmissionQueue, Waiting
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.view import ClusterView

# Waiting requests a freed slot is offered to, in order, when the first would rather wait.
LOOK_AHEAD = 8


@dataclass(frozen=True, slots=True)
class Dispatch:
    request: RouteRequest
    model: int
    decision: Decision
    ticket: Any = None
    queued_at: float | None = None  # when it entered the admission queue, if it waited


class Router:
    def __init__(self, scheduler: Scheduler, view: ClusterView,
                 queue: AdmissionQueue | None = None, prewarmer: Prewarmer | None = None) -> None:
        self.scheduler = scheduler
        self.view = view
        self.queue = queue
        self.prewarmer = prewarmer
        if queue is not None:
            view.held = queue.waiting_for
            view.held_at = queue.targets

    def arrive(self, request: RouteRequest, now: float, ticket: Any = None) -> Dispatch | Waiting:
        """Decide now, or hold the request if every slot is busy and there is a queue.

        Raises `ModelNotFound`/`Unavailable` from the decision and `QueueFull` from admission.
        """
        decision = self.scheduler.decide(request, self.view, now)
        m = self.view.model_index[request.model]
        if self.prewarmer is not None:
            self.prewarmer.arrived(m, now)
        if decision.wait and self.queue is not None:
            return self.queue.push(request, m, now, ticket, target=decision.node)
        dispatch = Dispatch(request, m, decision, ticket)
        self._start(dispatch, decision.node, now)
        return dispatch

    def failed_over(self, dispatch: Dispatch, failed: int, to: int, now: float) -> None:
        """`failed` could not serve `dispatch` before its first byte; it goes to `to`."""
        # the profile first: finishing tells the strategies' listeners to re-read it
        self.view.profiles.record(failed, dispatch.model, ok=False)
        self.view.finished(failed, dispatch.model, ok=False)
        self._start(dispatch, to, now)

    def copied(self, dispatch: Dispatch, node: int, now: float) -> None:
        """A second copy of `dispatch` goes to `node` too (hedging): its slot is taken there
        as a dispatch's is; `released` gives the losing copy's slot back."""
        self._start(dispatch, node, now)

    def _start(self, dispatch: Dispatch, node: int, now: float) -> None:
        self.view.started(node, dispatch.model)
        if self.prewarmer is not None:
            self.prewarmer.dispatched(node, dispatch.model, now)
        if dispatch.request.prefix:
            self.view.prefixes.record(node, dispatch.request.prefix)

    def finished(self, node: int, model: int, now: float, *, ok: bool, ttft: float = 0.0,
                 duration: float = 0.0, prompt_tokens: int = 0, cached_tokens: int = 0,
                 output_tokens: int = 0,
                 prefill_s: float = 0.0, decode_s: float = 0.0, stream: bool = True,
                 waited_s: float = 0.0, load_s: float = 0.0) -> list[Dispatch]:
        """Record the outcome; return waiting requests that can start now.

        `prompt_tokens` of which `cached_tokens` came from the node's prefix cache, and
        `prefill_s` the time the rest took, as the node's final statistics say (`load_s`: its
        load_duration). `ttft` counts from the request's arrival, of which `waited_s` passed
        before it was sent to this node (the admission queue, earlier attempts).
        """
        view = self.view
        latency = ttft if stream else (duration / output_tokens if output_tokens else duration)
        # the node's own overhead: what its timings do not explain of the time from sending
        # to the first byte (not streamed, the first byte comes after the decoding)
        overhead = ttft - waited_s - load_s - prefill_s - (0.0 if stream else decode_s) \
            if ok and prefill_s > 0 else None
        # the profile first: finishing tells the strategies' listeners to re-read it
        # prefill speed is what the node did: only the tokens it did not have cached
        view.profiles.record(node, model, ok=ok, ttft=ttft,
                             prompt_tokens=prompt_tokens - cached_tokens,
                             prefill_s=prefill_s, output_tokens=output_tokens,
                             decode_s=decode_s, latency=latency if ok else None,
                             duration=duration, overhead=overhead)
        view.finished(node, model, ok)
        view.history.append(time=now, node=node, model=model, prompt_tokens=prompt_tokens,
                            output_tokens=output_tokens, ttft=ttft, duration=duration,
                            outcome="ok" if ok else "error")
        return self.drain(now, first=model)

    def released(self, node: int, model: int, now: float) -> list[Dispatch]:
        """A request ended without an outcome worth recording (the client went away)."""
        self.view.finished(node, model, ok=False)
        return self.drain(now, first=model)

    def tick(self, now: float) -> list[Dispatch]:
        return self.drain(now)

    def prewarm(self, now: float) -> list[Preload]:
        """Models to load ahead of demand (none without a prewarmer). Each counts as started
        on its node until `preloaded`, so decisions see the load under way."""
        if self.prewarmer is None:
            return []
        plan = self.prewarmer.plan(self.view, now)
        for preload in plan:
            self.view.started(preload.node, preload.model)
        return plan

    def preloaded(self, preload: Preload, now: float, *, ok: bool) -> list[Dispatch]:
        """A load `prewarm` asked for is done (or failed): no outcome to learn from, but the
        model is resident there now."""
        self.view.finished(preload.node, preload.model, ok)
        return self.drain(now, first=preload.model)

    def cancel(self, waiting: Waiting) -> None:
        if self.queue is not None:
            self.queue.cancel(waiting)

    def drain(self, now: float, first: int | None = None) -> list[Dispatch]:
        """Dispatch waiting requests, best first per model, while a node can start them."""
        if self.queue is None or not len(self.queue):
            return []
        models = self.queue.models()
        if first is not None and first in models:
            models.remove(first)
            models.insert(0, first)
        out = []
        for m in models:
            while (found := self._startable(m, now)) is not None:
                item, decision = found
                self.queue.take(item, now)
                dispatch = Dispatch(item.request, m, decision, item.ticket, item.arrived)
                self._start(dispatch, decision.node, now)  # the next decision sees the slot taken
                out.append(dispatch)
        return out

    def _startable(self, m: int, now: float) -> tuple[Waiting, Decision] | None:
        """The first waiting request for model `m` that a node can start now, looking past a
        head that waits for a slot of its own node (its prefix is there) at most `LOOK_AHEAD`
        deep: a slot freed elsewhere is for a request waiting for that node."""
        assert self.queue is not None
        item = self.queue.peek(m)
        if item is None:
            return None
        decision = self.scheduler.decide(item.request, self.view, now)
        if not decision.wait:
            return item, decision
        for later in self.queue.head(m, LOOK_AHEAD)[1:]:
            decision = self.scheduler.decide(later.request, self.view, now)
            if not decision.wait:
                return later, decision
        return None
