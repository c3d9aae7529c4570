"""The gateway's monitoring, wired together: the recorder its router writes to, the sampler,
the alert rules and their notifier, the model-sync table, and one loop that ticks them all
(``alerts.interval``, 1 s by default) and wakes the dashboard's event streams.

Its HTTP side (``/dashboard``, ``/dashboard/events``, ``/admin/status``, ``/admin/alerts``) is
`ollamamax.dashboard.routes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgspec

from ollamamax import alerts as alerting
from ollamamax.metrics import GatewayMetrics
from ollamamax.observability import snapshot
from ollamamax.observability.recorder import GatewayRecorder, ObservedRouter
from ollamamax.observability.sampler import CHART_WINDOW, Sampler
from ollamamax.observability.transfers import Transfers
from ollamamax.scheduler.view import ClusterView

log = logging.getLogger(__name__)


def observed_router(metrics: GatewayMetrics, scheduler: Any, view: ClusterView, *args: Any,
                    window: float = 60.0, **kwargs: Any) -> ObservedRouter:
    """The gateway's router, recording into `metrics`' catalogue and sliding windows of
    `window` seconds (at least the dashboard's)."""
    recorder = GatewayRecorder(metrics.observed, view, max(window, CHART_WINDOW))
    return ObservedRouter(scheduler, view, *args, recorder=recorder, **kwargs)


class Monitor:
    def __init__(self, gateway: Any) -> None:
        conf = gateway.config.alerts
        self.gateway = gateway
        self.config = conf
        self.started = time.monotonic()
        observed = gateway.metrics.observed
        self.recorder: GatewayRecorder = gateway.router.recorder
        self.transfers = Transfers()
        observed.sync.transfers = self.transfers.rows
        queue = gateway.router.queue
        observed.read_queues(lambda: len(queue) if queue is not None else 0, self._node_queues)
        self.sampler = Sampler(self.recorder, gateway.metrics, window=conf.window,
                               in_flight=lambda: gateway.path.in_flight,
                               queued=lambda: len(queue) if queue is not None else 0)
        self.alerts = alerting.Alerts(alerting.rules_from(conf.rules)) if conf.enabled else None
        observed.alerts_firing = self._firing
        self.notifier = alerting.WebhookNotifier(
            conf.webhooks, timeout=conf.webhook_timeout, retries=conf.webhook_retries,
            on_result=lambda ok: observed.alert_notifications.inc(("sent" if ok else "failed",)))
        self.stopping = False
        self.streams = 0  # dashboard event streams open now
        self._tick: asyncio.Event | None = None
        self._cached: tuple[int, bytes] = (-1, b"")
        self._cached_update: tuple[int, bytes] = (-1, b"")
        self._task: asyncio.Task[None] | None = None
        self._cpu_from: float | None = None

    # -- the loop ----------------------------------------------------------------------------

    def sample(self) -> dict[str, float | None]:
        self._cpu_from = time.thread_time()  # counted until the tick ends (`_ticked`)
        return self.sampler.tick()

    async def start(self) -> None:
        self._tick = asyncio.Event()
        self.sample()  # a first point: rates and CPU start from here
        self._count_cpu()
        self._task = asyncio.create_task(alerting.run(
            self.alerts or alerting.Alerts(()), self.sample, self.notifier, self.config.interval,
            after=self._ticked), name="monitor")

    def _count_cpu(self) -> None:
        """Add the CPU time since `_cpu_from` to what monitoring cost."""
        if self._cpu_from is not None:
            self.gateway.metrics.observed.monitor_cpu.inc((), time.thread_time() - self._cpu_from)
            self._cpu_from = None

    def stop_streams(self) -> None:
        """The gateway stops: end the dashboard's event streams now, not at its deadline."""
        self.stopping = True
        self._ticked()

    async def close(self) -> None:
        self.stop_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.notifier.close()

    def _ticked(self) -> None:
        self._count_cpu()
        tick, self._tick = self._tick, asyncio.Event()
        if tick is not None:
            tick.set()

    async def next_tick(self) -> None:
        if self._tick is None:
            self._tick = asyncio.Event()
        await self._tick.wait()

    # -- what is shown -------------------------------------------------------------------------

    def snapshot(self, charts: bool = True) -> dict[str, Any]:
        return snapshot.build(self.gateway, self, charts=charts)

    def snapshot_json(self) -> bytes:
        """The full snapshot as JSON, built at most once a tick however many streams read it."""
        ticks = self.sampler.ticks
        if self._cached[0] != ticks:
            self._cpu_from = time.thread_time()
            self._cached = (ticks, msgspec.json.encode(self.snapshot()))
            self._count_cpu()
        return self._cached[1]

    def update_json(self) -> bytes:
        """The snapshot with only the newest point of each chart series (a dashboard that
        has the rest appends it), at most once a tick."""
        ticks = self.sampler.ticks
        if self._cached_update[0] != ticks:
            self._cpu_from = time.thread_time()
            doc = snapshot.build(self.gateway, self, charts=False, point=True)
            self._cached_update = (ticks, msgspec.json.encode(doc))
            self._count_cpu()
        return self._cached_update[1]

    def _firing(self) -> list[tuple[str, str]]:
        if self.alerts is None:
            return []
        return [(st.rule.name, st.firing) for st in self.alerts.firing()]

    def _node_queues(self) -> list[tuple[str, int, int, int]]:
        view = self.gateway.view
        rows = []
        for i in view.present_nodes():
            info = view.info[i] or {}
            rows.append((view.ids[i], int(view.queue_depth[i]), int(info.get("busy", 0) or 0),
                         int(info.get("slots", 0) or 0)))
        return rows
