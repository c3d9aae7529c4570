"""Recording what the request path does, without touching it: the gateway's router, with the
outcome of each request also written to the monitoring catalogue and the sliding windows.

`ObservedRouter` is the scheduler's `Router` (the shared request lifecycle) whose bookkeeping
calls also record: the decision time of every `decide` (`TimedScheduler`), the admission-queue
wait of every dispatch, and TTFT, time per token, tokens and prefix-cache hits of every
finished request. Each record is O(1): a few dict increments and bisections, about 3 us a
request in all on this machine (docs/metrics.md), with no lock.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ollamamax.metrics import ObservedGateway
from ollamamax.observability.window import WindowedQuantiles
from ollamamax.scheduler.queue import Waiting
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.router import Dispatch, Router
from ollamamax.scheduler.view import ClusterView


class GatewayRecorder:
    """Where the router's records go: the catalogue's instruments (for /metrics) and windows
    (percentiles over the last `window` seconds, for the dashboard and the alert rules)."""

    def __init__(self, observed: ObservedGateway, view: ClusterView, window: float = 60.0) -> None:
        self.observed = observed
        self.view = view
        self.ttft = WindowedQuantiles(window)
        self.schedule = WindowedQuantiles(window)

    def decided(self, now: float, seconds: float) -> None:
        self.observed.schedule.observe((), seconds)
        self.schedule.record(now, seconds)

    def waited(self, now: float, seconds: float) -> None:
        self.observed.queue_wait.observe((), seconds)

    def finished(self, node: int, model: int, now: float, outcome: Mapping[str, Any]) -> None:
        o, view = self.observed, self.view
        node_id, name = view.ids[node], view.model_names[model]
        if not outcome.get("ok"):
            o.requests.inc((node_id, name, "error"))
            return
        o.requests.inc((node_id, name, "ok"))
        key = (name,)
        ttft = outcome.get("ttft", 0.0)
        o.ttft.observe(key, ttft)
        self.ttft.record(now, ttft)
        o.request_time.observe(key, outcome.get("duration", 0.0))
        tokens = outcome.get("output_tokens", 0)
        if tokens:
            o.tokens.inc((node_id, name), tokens)
            decode_s = outcome.get("decode_s", 0.0)
            if decode_s > 0:
                o.inter_token.observe(key, decode_s / tokens)
        prompt = outcome.get("prompt_tokens", 0)
        if prompt:
            cached = min(prompt, outcome.get("cached_tokens", 0))
            o.prompt_tokens.inc((node_id, name, "hit"), cached)
            o.prompt_tokens.inc((node_id, name, "miss"), prompt - cached)

    def cancelled(self, node: int, model: int) -> None:
        view = self.view
        self.observed.requests.inc((view.ids[node], view.model_names[model], "cancelled"))


class TimedScheduler:
    """A scheduler whose `decide` also records how long it took; everything else is the
    wrapped scheduler's."""

    def __init__(self, scheduler: Any, recorder: GatewayRecorder) -> None:
        self._scheduler = scheduler
        self._decide = scheduler.decide
        self._recorder = recorder

    def decide(self, request: RouteRequest, view: ClusterView, now: float) -> Decision:
        started = time.perf_counter()
        try:
            return self._decide(request, view, now)
        finally:
            self._recorder.decided(now, time.perf_counter() - started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scheduler, name)


class ObservedRouter(Router):
    """The gateway's `Router`, recording into `recorder` as requests come and go."""

    def __init__(self, scheduler: Any, *args: Any, recorder: GatewayRecorder,
                 **kwargs: Any) -> None:
        super().__init__(TimedScheduler(scheduler, recorder), *args, **kwargs)
        self.recorder = recorder

    def arrive(self, request: RouteRequest, now: float, ticket: Any = None) -> Dispatch | Waiting:
        outcome = super().arrive(request, now, ticket)
        if isinstance(outcome, Dispatch):
            self.recorder.waited(now, 0.0)
        return outcome

    def drain(self, now: float, first: int | None = None) -> list[Dispatch]:
        dispatches = super().drain(now, first)
        for dispatch in dispatches:
            if dispatch.queued_at is not None:
                self.recorder.waited(now, max(0.0, now - dispatch.queued_at))
        return dispatches

    def finished(self, node: int, model: int, now: float, **outcome: Any) -> list[Dispatch]:
        self.recorder.finished(node, model, now, outcome)
        return super().finished(node, model, now, **outcome)

    def released(self, node: int, model: int, now: float) -> list[Dispatch]:
        self.recorder.cancelled(node, model)
        return super().released(node, model, now)
