"""The gateway's monitoring endpoints.

    GET /dashboard                 the dashboard page (its assets under /dashboard/static/)
    GET /dashboard/events          server-sent events: a "snapshot" (the JSON of /admin/status)
                                   first, then an "update" per tick (1 s): the same without
                                   the chart series, with their newest point
    GET /admin/status              the same snapshot, once (``ollamamax status`` reads it)
    GET /admin/alerts              the alert rules' states

Every one passes `require_admin` first: with API keys they need an admin key. A browser opens
``/dashboard?key=<admin key>`` once; the key is then kept in an HttpOnly cookie (an
EventSource cannot send headers) and dropped from the address (`security.middleware`).
"""

from __future__ import annotations

import importlib.resources
import time

from aiohttp import web

from ollamamax.api.http import json_response
from ollamamax.gateway.admin_flags import require_admin
from ollamamax.observability import request_ids
from ollamamax.observability.monitor import Monitor

ASSETS = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}


def _assets() -> dict[str, bytes]:
    static = importlib.resources.files("ollamamax.dashboard") / "static"
    return {name: (static / name).read_bytes() for name in ASSETS}


class DashboardRoutes:
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.assets = _assets()

    def add(self, app: web.Application) -> None:
        get = app.router.add_get
        get("/dashboard", self.page)
        get("/dashboard/", self.page)
        get("/dashboard/static/{name}", self.asset)
        get("/dashboard/events", self.events)
        get("/admin/status", self.status)
        get("/admin/alerts", self.alerts)

    async def page(self, request: web.Request) -> web.Response:
        require_admin(request)
        return self._asset("index.html")

    async def asset(self, request: web.Request) -> web.Response:
        require_admin(request)
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        return self._asset(name)

    def _asset(self, name: str) -> web.Response:
        return web.Response(body=self.assets[name], content_type=ASSETS[name], charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def status(self, request: web.Request) -> web.Response:
        require_admin(request)
        charts = request.query.get("charts", "1") not in ("0", "false", "no")
        return json_response(self.monitor.snapshot(charts=charts))

    async def alerts(self, request: web.Request) -> web.Response:
        require_admin(request)
        monitor = self.monitor
        states = monitor.alerts.describe(time.time()) if monitor.alerts is not None else []
        return json_response({"enabled": monitor.alerts is not None, "alerts": states,
                              "webhooks": len(monitor.config.webhooks),
                              "evaluations": monitor.alerts.evaluations if monitor.alerts else 0})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """A snapshot now, then one each tick until the client leaves or the gateway stops."""
        require_admin(request)
        monitor = self.monitor
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        monitor.streams += 1
        try:
            sent = monitor.sampler.ticks
            await response.write(b"retry: 2000\n\n" + _event(monitor.snapshot_json()))
            while not monitor.stopping:
                await monitor.next_tick()
                if monitor.stopping:
                    break
                ticks = monitor.sampler.ticks
                # the newest chart point when this stream has every earlier one, else it all
                data = (_event(monitor.update_json(), b"update") if ticks == sent + 1
                        else _event(monitor.snapshot_json()))
                sent = ticks
                await response.write(data)
        except (ConnectionError, RuntimeError):
            pass  # the client went away (aiohttp raises on writing to a closed transport)
        finally:
            monitor.streams -= 1
        return response


def _event(data: bytes, kind: bytes = b"snapshot") -> bytes:
    return b"event: " + kind + b"\ndata: " + data + b"\n\n"


def install(app: web.Application, monitor: Monitor) -> None:
    """The monitoring endpoints, request ids on every answer, and the monitor's loop started
    and stopped with the application."""
    DashboardRoutes(monitor).add(app)
    request_ids.install(app)

    async def start(app: web.Application) -> None:
        await monitor.start()

    async def shutdown(app: web.Application) -> None:
        monitor.stop_streams()

    async def cleanup(app: web.Application) -> None:
        await monitor.close()

    app.on_startup.append(start)
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)
