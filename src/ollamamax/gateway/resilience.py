"""What the request path and the health loop tell each other about failing nodes.

The pure parts decide (`gateway.outliers`: breakers and ejection; `gateway.retries`: the
retry budget and hedge timing); this shell classifies upstream failures, feeds them in with
the time, logs the sentences they return and keeps the metrics. The promises and their
numbers are in docs/resilience.md.

Reasons (the ``reason`` label of ``ollamamax_gateway_retries_total``):

    connect      refused, reset or dropped before the first byte      counts against the node
    timeout      no first byte within the TTFT timeout                counts against the node
    status       the node answered a 5xx other than 503               counts against the node
    overloaded   503: the node's queue is full                        overload: not counted
    draining     503 from a draining node                             not counted; node drained
    not_found    404: the node no longer has the model (stale view)   not counted
    hedge        a second copy of a slow non-streamed request
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ollamamax.config import ResilienceConfig
from ollamamax.errors import UpstreamError, UpstreamRefused, UpstreamStatus, UpstreamTimeout
from ollamamax.gateway.outliers import OutlierDetector, OutlierSettings
from ollamamax.gateway.retries import AnswerTimes, RetryBudget
from ollamamax.metrics import GatewayMetrics
from ollamamax.scheduler import ClusterView

log = logging.getLogger(__name__)

NOT_BLAMED = frozenset({"overloaded", "draining", "not_found"})


def classify(exc: UpstreamError) -> str:
    """The reason a request failed before its first byte (see the module docstring)."""
    if isinstance(exc, UpstreamStatus):
        if exc.upstream_status == 503:
            return "draining" if b"draining" in exc.body else "overloaded"
        return "not_found" if exc.upstream_status == 404 else "status"
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    return "connect"


class Resilience:
    def __init__(self, settings: ResilienceConfig, view: ClusterView, metrics: GatewayMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.view = view
        self.metrics = metrics
        self.clock = clock
        self.outliers = OutlierDetector(view, OutlierSettings(
            consecutive=settings.consecutive_failures, base_s=settings.base_ejection,
            max_s=settings.max_ejection, max_share=settings.max_ejected_share,
            panic_threshold=settings.panic_threshold))
        self.budget = RetryBudget(settings.retry_budget, settings.retry_budget_min,
                                  settings.retry_budget_window)
        self.answer_times = AnswerTimes() if settings.hedge else None

    # -- the request path ------------------------------------------------------------------

    def failed(self, node: int, exc: UpstreamError) -> str:
        """A request to `node` failed before its first byte; returns the reason."""
        reason = classify(exc)
        now = self.clock()
        view = self.view
        if isinstance(exc, UpstreamRefused) and view.set_health(node, False, now, exc.reason):
            self.metrics.node_healthy.labels(view.ids[node]).set(0)
            log.warning("marked %s down: %s", view.ids[node], exc.reason)
            self._said(self.outliers.rebalance())
        if reason == "draining" and not view.draining[node]:
            view.set_draining(node, True)
            log.info("%s is draining: no new requests go there", view.ids[node])
            self._said(self.outliers.rebalance())
        if reason in NOT_BLAMED:
            self.outliers.released(node, now)  # a probe that proved nothing: another may go
        else:
            self._blame(node, now, exc.reason)
        return reason

    def broken(self, node: int, message: str) -> None:
        """A stream from `node` broke after its first byte."""
        self._blame(node, self.clock(), message)

    def may_retry(self) -> bool:
        """Take an extra attempt from the budget; False (counted and logged) when spent."""
        if self.budget.spend(time.perf_counter()):
            return True
        self.metrics.retry_budget_exceeded.inc()
        log.warning("retry budget spent (%.0f extra attempts allowed in %g s): the failure is "
                    "answered instead of retried", self.budget.allowed(),
                    self.settings.retry_budget_window)
        return False

    def hedge_delay(self, node: int, model: int) -> float | None:
        """When to send a hedge for a non-streamed request to `node` (None: not at all)."""
        if self.answer_times is None:
            return None
        p95 = self.answer_times.p95(node, model)
        return None if p95 is None else max(p95, self.settings.hedge_min_delay)

    # -- the health loop -------------------------------------------------------------------

    def tick(self) -> list[str]:
        sentences = self.outliers.tick(self.clock())
        if sentences:
            self._gauges()
        return sentences

    def health_changed(self) -> str:
        sentence = self.outliers.rebalance()
        if sentence:
            self._gauges()
        return sentence

    # -- internals -------------------------------------------------------------------------

    def _blame(self, node: int, now: float, reason: str) -> None:
        before = self.outliers.ejections
        sentence = self.outliers.failure(node, now, reason)
        if self.outliers.ejections != before:
            self.metrics.ejections.labels(self.view.ids[node]).inc()
        self._said(sentence)

    def _said(self, sentence: str) -> None:
        if sentence:
            log.warning("%s", sentence)
            self._gauges()

    def _gauges(self) -> None:
        view = self.view
        for i in view.present_nodes():
            self.metrics.node_ejected.labels(view.ids[i]).set(int(view.ejected[i]))
        self.metrics.panic.set(int(self.outliers.panic))
