"""The request path: admit, decide, send, fail over before the first byte, stream, record.

The decisions are the scheduler's (`scheduler.router.Router`, shared with the simulator);
this module only does the I/O around them. A request the router holds in its admission queue
waits here on a future until a slot frees. A failure before the first byte reaches the client
(connection refused, a 5xx, a timeout, a node dying while composing a non-streamed answer)
sends the request to the decision's next fallback (never the node that just failed; within
the retry budget; the reason counted). A failure after it ends the stream with an error chunk;
the client never hangs. Every outcome also feeds the nodes' circuit breakers
(`gateway.resilience`); a non-streamed request may be hedged (`resilience.hedge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgspec
from aiohttp import web

from ollamamax.cache.keys import CACHE_STATE
from ollamamax.cache.keys import HEADER as CACHE_HEADER
from ollamamax.config import GatewayConfig, ResilienceConfig
from ollamamax.errors import (
    ModelNotFound,
    OllamaMaxError,
    StreamBroken,
    StreamStopped,
    Unavailable,
    UpstreamError,
    UpstreamStatus,
)
from ollamamax.gateway.adapters import Adapter
from ollamamax.gateway.resilience import Resilience
from ollamamax.gateway.upstream import Reply, Upstream
from ollamamax.metrics import GatewayMetrics, cached_labels
from ollamamax.scheduler import ClusterView, RouteRequest
from ollamamax.scheduler.queue import Waiting
from ollamamax.scheduler.router import Dispatch, Router

log = logging.getLogger(__name__)

TICK_S = 0.05  # how often held requests are re-checked against capacity freed elsewhere
NODE_HEADER = "X-OllamaMax-Node"  # which node answered, on every proxied response


@dataclass(slots=True)
class _Outcome:
    """How the committed attempt went, for the router's books."""

    ok: bool = False
    broken: str = ""  # why the stream broke after its first byte (the node's fault)
    ttft: float = 0.0
    stats: _Stats | None = None


class RequestPath:
    def __init__(self, config: GatewayConfig, router: Router, upstream: Upstream,
                 metrics: GatewayMetrics, clock: Callable[[], float] = time.monotonic,
                 resilience: Resilience | None = None) -> None:
        self.config = config
        self.router = router
        self.view: ClusterView = router.view
        self.upstream = upstream
        self.metrics = metrics
        self.clock = clock
        self.resilience = resilience or Resilience(ResilienceConfig(), self.view, metrics, clock)
        self.outliers = self.resilience.outliers
        self._budget = self.resilience.budget
        self._hedging = self.resilience.answer_times is not None
        self._total = config.total_timeout
        self.stopping = False  # the drain deadline passed: nothing is retried any more
        self._requests, self._duration, self._ttft = metrics.requests, metrics.duration, metrics.ttft
        self._retries = cached_labels(metrics.retries)
        self.in_flight = 0
        self._ticker: asyncio.Task[None] | None = None
        view = self.view
        metrics.read_in_flight(lambda: self.in_flight, lambda: {
            view.ids[i]: int(view.in_flight[i]) for i in range(view.n)})

    async def forward(self, request: web.Request, route: RouteRequest, requested: str,
                      path: str, body: bytes, adapter: Adapter) -> web.StreamResponse:
        """Serve one inference request from the best node that answers."""
        started = time.perf_counter()
        self.in_flight += 1
        self._budget.request(started)
        deadline = started + self._total if self._total else 0.0
        status, node_id = 500, ""
        try:
            dispatch = await self._admit(route, requested, deadline)
            response, node_id = await self._serve(request, dispatch, requested, path, body,
                                                  adapter, started, time.perf_counter(),
                                                  deadline)
            status = response.status
            return response
        except OllamaMaxError as exc:
            status = exc.status
            raise
        finally:
            self.in_flight -= 1
            self._requests.inc((route.endpoint, str(status), node_id))
            self._duration.observe((route.endpoint,), time.perf_counter() - started)

    # -- admission -------------------------------------------------------------------------

    async def _admit(self, route: RouteRequest, requested: str, deadline: float) -> Dispatch:
        loop = asyncio.get_running_loop()
        ticket: asyncio.Future[Dispatch] = loop.create_future()
        try:
            outcome = self.router.arrive(route, self.clock(), ticket)
        except ModelNotFound:
            raise ModelNotFound(requested) from None
        if isinstance(outcome, Dispatch):
            return outcome
        return await self._wait(outcome, ticket, deadline)

    async def _wait(self, waiting: Waiting, ticket: asyncio.Future[Dispatch],
                    deadline: float) -> Dispatch:
        """Hold a queued request until the router dispatches it (or the wait is too long)."""
        self._ensure_ticker()
        limit = self.config.ttft_timeout
        if deadline:
            limit = max(0.0, min(limit, deadline - time.perf_counter()))
        try:
            async with asyncio.timeout(limit):
                return await ticket
        except BaseException as exc:  # timed out, or the client went away
            if ticket.done() and not ticket.cancelled():
                dispatch = ticket.result()  # dispatched in that same instant: give it back
                self.deliver(self.router.released(dispatch.decision.node, dispatch.model,
                                                   self.clock()))
            else:
                self.router.cancel(waiting)
            if isinstance(exc, TimeoutError):
                raise Unavailable(f"no slot freed within {limit:g} s") from None
            raise

    def deliver(self, dispatches: list[Dispatch]) -> None:
        """Hand requests the router released to their waiting clients (a slot each)."""
        for dispatch in dispatches:
            ticket = dispatch.ticket
            if ticket is not None and not ticket.done():
                ticket.set_result(dispatch)
            else:  # its client is gone: free the slot it was given
                self.deliver(self.router.released(dispatch.decision.node, dispatch.model,
                                                   self.clock()))

    def deliver_ticks(self) -> None:
        """Dispatch held requests that fit now (called when telemetry arrives)."""
        if self.router.queue is not None and len(self.router.queue):
            self.deliver(self.router.tick(self.clock()))

    def _ensure_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="admission")

    async def _tick(self) -> None:
        """Re-check held requests while any wait: capacity also frees through telemetry."""
        queue = self.router.queue
        while queue is not None and len(queue):
            await asyncio.sleep(TICK_S)
            self.deliver_ticks()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker

    # -- attempts --------------------------------------------------------------------------

    async def _serve(self, request: web.Request, dispatch: Dispatch, requested: str, path: str,
                     body: bytes, adapter: Adapter, started: float, sent: float,
                     deadline: float) -> tuple[web.StreamResponse, str]:
        """`started`: when the request arrived; `sent`: when it left the admission queue."""
        failures: list[UpstreamError] = []
        node = dispatch.decision.node
        tried: list[int] | None = None  # nodes that failed this request: never tried again
        fallbacks: Iterator[int] | None = None  # computed only if the first node fails
        hedge = self._hedging and not dispatch.request.stream
        for attempt in range(1, self.config.max_attempts + 1):
            if hedge and attempt == 1:
                tried = []
                node, reply = await self._hedged(node, dispatch, path, body, failures, deadline,
                                                 tried)
            else:
                reply = await self._attempt(node, dispatch, path, body, failures, deadline)
            if reply is not None and reply.status != 404:
                response = await self._committed(request, dispatch, node, reply, adapter, started,
                                                 sent)
                return response, self.view.ids[node]
            tried = tried if tried is not None else []
            tried.append(node)
            nxt = None
            if attempt < self.config.max_attempts:
                fallbacks = fallbacks or iter(dispatch.decision.fallbacks())
                nxt = self._next(fallbacks, tried)
            if reply is not None:
                # 404: the node no longer has the model (the view was stale): the next, if any
                if nxt is None or not self.resilience.may_retry():
                    response = await self._committed(request, dispatch, node, reply, adapter,
                                                     started, sent)
                    return response, self.view.ids[node]
                failures.append(UpstreamStatus(self.view.ids[node], 404, reply.first))
                reply.release()
                self.outliers.released(node, self.clock())
                reason = "not_found"
            else:
                reason = self.resilience.failed(node, failures[-1])
                if nxt is None or self.stopping or not self.resilience.may_retry():
                    log.warning("%s; no retry", failures[-1].message)
                    break
            self._retries(reason).inc()
            log.warning("%s; trying %s", failures[-1].message, self.view.ids[nxt])
            self.router.failed_over(dispatch, node, nxt, self.clock())
            node = nxt
        self.deliver(self.router.finished(node, dispatch.model, self.clock(), ok=False))
        raise self._exhausted(requested, failures)

    def _next(self, fallbacks: Iterator[int], tried: list[int]) -> int | None:
        """The next fallback not tried yet, routable ones first (a node may have been marked
        down or ejected since the decision)."""
        routable = self.view.routable
        spare = None
        for i in fallbacks:
            if i in tried:
                continue
            if routable[i]:
                return i
            if spare is None:
                spare = i
        return spare

    async def _committed(self, request: web.Request, dispatch: Dispatch, node: int,
                         reply: Reply, adapter: Adapter, started: float,
                         sent: float) -> web.StreamResponse:
        """Answer from `node`, then tell the router and the node's breaker how it went."""
        outcome = _Outcome()
        try:
            response = await self._respond(request, dispatch, node, reply, adapter, started,
                                           outcome)
        except BaseException:
            now = self.clock()
            self.outliers.released(node, now)
            self.deliver(self.router.released(node, dispatch.model, now))
            raise
        now = self.clock()
        if outcome.ok:
            sentence = self.outliers.success(node, now)
            if sentence:
                log.info("%s", sentence)
            if self._hedging and not dispatch.request.stream:
                self.resilience.answer_times.record(  # type: ignore[union-attr]
                    node, dispatch.model, outcome.ttft)
        elif outcome.broken:
            self.resilience.broken(node, outcome.broken)
        stats = outcome.stats
        self.deliver(self.router.finished(
            node, dispatch.model, now, ok=outcome.ok, ttft=outcome.ttft,
            duration=time.perf_counter() - sent, stream=dispatch.request.stream,
            prompt_tokens=stats.prompt_eval_count if stats else dispatch.request.prompt_tokens,
            cached_tokens=stats.prompt_eval_cached_count if stats else 0,
            output_tokens=stats.eval_count if stats else 0,
            prefill_s=stats.prompt_eval_duration / 1e9 if stats else 0.0,
            decode_s=stats.eval_duration / 1e9 if stats else 0.0, waited_s=sent - started,
            load_s=stats.load_duration / 1e9 if stats else 0.0))
        return response

    async def _attempt(self, node: int, dispatch: Dispatch, path: str, body: bytes,
                       failures: list[UpstreamError], deadline: float) -> Reply | None:
        view = self.view
        self.outliers.sending(node, self.clock())
        try:
            return await self.upstream.send(view.ids[node], view.urls[node] + path, body,
                                            read_all=not dispatch.request.stream,
                                            deadline=deadline)
        except UpstreamError as exc:
            failures.append(exc)
            return None

    async def _hedged(self, node: int, dispatch: Dispatch, path: str, body: bytes,
                      failures: list[UpstreamError], deadline: float, tried: list[int],
                      ) -> tuple[int, Reply | None]:
        """The first attempt of a non-streamed request, with a second copy to the next node
        if the first has not answered by its p95; the first answer wins, the other is
        cancelled. Returns the node that answered (or the last that failed)."""
        delay = self.resilience.hedge_delay(node, dispatch.model)
        first = asyncio.ensure_future(self._attempt(node, dispatch, path, body, failures,
                                                    deadline))
        if delay is None:
            return node, await first
        done, _ = await asyncio.wait((first,), timeout=delay)
        other = None if done else self._next(iter(dispatch.decision.fallbacks()), [node])
        if other is None or not self.resilience.may_retry():
            return node, await first
        self._retries("hedge").inc()
        self.router.copied(dispatch, other, self.clock())
        second = asyncio.ensure_future(self._attempt(other, dispatch, path, body, failures,
                                                     deadline))
        racing = {first: node, second: other}
        try:
            while racing:
                done, _ = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    winner = racing.pop(task)
                    reply = task.result()
                    if reply is not None or not racing:
                        return winner, reply
                    # this copy failed: the other decides; this one's slot is given back
                    self.resilience.failed(winner, failures[-1])
                    tried.append(winner)
                    self.deliver(self.router.released(winner, dispatch.model, self.clock()))
            raise AssertionError("unreachable")
        finally:
            for task, loser in racing.items():
                await _cancelled(task)
                self.deliver(self.router.released(loser, dispatch.model, self.clock()))

    async def _respond(self, request: web.Request, dispatch: Dispatch, node: int, reply: Reply,
                       adapter: Adapter, started: float, outcome: _Outcome,
                       ) -> web.StreamResponse:
        endpoint = dispatch.request.endpoint
        if not dispatch.request.stream or reply.status >= 400:
            response = adapter.whole(reply.status, reply.first)
            response.headers[NODE_HEADER] = self.view.ids[node]
            reply.release()
            outcome.ok = reply.status < 400
            outcome.ttft = time.perf_counter() - started
            outcome.stats = _stats(reply.first) if outcome.ok else None
            self._ttft.observe((endpoint,), outcome.ttft)
            return response
        response = web.StreamResponse(headers={"Content-Type": adapter.stream_content_type,
                                               NODE_HEADER: self.view.ids[node]})
        cached = request.get(CACHE_STATE)  # what the response cache made of this request
        if cached is not None:
            response.headers[CACHE_HEADER] = cached
        await response.prepare(request)
        try:
            await response.write(adapter.feed(reply.first))
            outcome.ttft = time.perf_counter() - started
            self._ttft.observe((endpoint,), outcome.ttft)
            last = reply.first
            async for data in reply.chunks():
                last = data
                out = adapter.feed(data)
                if out:
                    await response.write(out)
            tail = adapter.end()
        except StreamBroken as exc:
            log.warning("%s; ending the stream with an error", exc.message)
            outcome.broken = "" if isinstance(exc, StreamStopped) else exc.message
            self.metrics.stream_errors.labels(self.view.ids[node]).inc()
            reply.close()
            await response.write(adapter.error(exc.message))
            await response.write_eof()
            return response
        except BaseException:
            reply.close()  # the client went away: let the node stop generating
            raise
        if tail:
            await response.write(tail)
        await response.write_eof()
        reply.release()
        outcome.ok = True
        outcome.stats = _stats(last)
        return response

    def _exhausted(self, requested: str, failures: list[UpstreamError]) -> OllamaMaxError:
        if not failures:
            return Unavailable(f"no node can serve model '{requested}' now")
        reasons = "; ".join(f.message for f in failures)
        return Unavailable(f"no node could answer for model '{requested}': {reasons}")


class _Stats(msgspec.Struct):
    """The statistics in Ollama's final chunk, as far as the router learns from them."""

    done: bool = False
    prompt_eval_count: int = 0
    prompt_eval_cached_count: int = 0  # set by nodes that report prefix-cache hits
    prompt_eval_duration: int = 0
    load_duration: int = 0  # the node's load (the sim engine: its queue too), in ns
    eval_count: int = 0
    eval_duration: int = 0


_stats_decoder = msgspec.json.Decoder(_Stats)


def _stats(data: bytes) -> _Stats | None:
    """The final chunk's statistics, if `data` ends with it (embeddings and others: None)."""
    line = data.rstrip().rpartition(b"\n")[2]
    if b'"done":true' not in line or len(line) > 4096:
        return None
    try:
        stats = _stats_decoder.decode(line)
    except msgspec.DecodeError:
        return None
    return stats if stats.done else None


async def _cancelled(task: asyncio.Future[Reply | None]) -> None:
    """Cancel a losing attempt and drop its connection, whatever state it reached."""
    task.cancel()
    await asyncio.wait((task,))
    if not task.cancelled() and task.exception() is None:
        reply = task.result()
        if reply is not None:
            reply.close()
