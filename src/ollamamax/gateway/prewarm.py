"""The gateway's side of prewarming: every interval, send the loads the router's prewarmer
plans, as Ollama's own load request (``POST /api/generate`` with only the model: the node
loads it and keeps it for its keep-alive), and tell the router how each ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
import msgspec

from ollamamax.gateway.proxy import RequestPath
from ollamamax.scheduler.prewarm import Preload

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 600.0  # a large model from a slow disk


class PrewarmLoop:
    def __init__(self, path: RequestPath, session: aiohttp.ClientSession,
                 interval_s: float) -> None:
        self.path = path
        self.router = path.router
        self.session = session
        self.interval_s = interval_s
        self._loads: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.tick()

    def tick(self) -> list[Preload]:
        """Start the loads planned now; returns them."""
        plan = self.router.prewarm(self.path.clock())
        for preload in plan:
            task = asyncio.create_task(self._load(preload), name="prewarm-load")
            self._loads.add(task)
            task.add_done_callback(self._loads.discard)
        return plan

    async def wait(self) -> None:
        """Until the loads under way have ended (tests, shutdown)."""
        while self._loads:
            await asyncio.gather(*list(self._loads), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._loads):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.wait()

    async def _load(self, preload: Preload) -> None:
        view = self.router.view
        url, model = view.urls[preload.node], view.model_names[preload.model]
        ok = False
        try:
            async with self.session.post(
                    url + "/api/generate", data=msgspec.json.encode({"model": model}),
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=LOAD_TIMEOUT_S)) as response:
                await response.read()
                ok = response.status == 200
                if not ok:
                    log.info("prewarm: %s answered HTTP %d loading %s", url, response.status,
                             model)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("prewarm: loading %s on %s failed: %s", model, url, exc)
        finally:
            self.path.deliver(self.router.preloaded(preload, self.path.clock(), ok=ok))
        if ok:
            log.info("prewarm: loaded %s on %s ahead of demand", model, view.ids[preload.node])
