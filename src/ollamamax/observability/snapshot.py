"""The cluster in one JSON document: what ``GET /admin/status`` answers, the dashboard's
server-sent events carry once a tick, and ``ollamamax status`` / ``top`` print."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ollamamax import __version__
from ollamamax.observability.process import MB


def build(gateway: Any, monitor: Any, *, charts: bool = True, point: bool = False,
          ) -> dict[str, Any]:
    """`gateway`: the `Gateway`; `monitor`: its `Monitor`. `charts`: every series of the
    last minutes; `point`: only their newest point (the dashboard's updates)."""
    view = gateway.view
    sampler = monitor.sampler
    now = time.time()
    queue = gateway.router.queue
    nodes = [_node(gateway, i) for i in view.present_nodes()]
    doc: dict[str, Any] = {
        "time": now,
        "version": __version__,
        "gateway": {
            "strategy": gateway.scheduler.name, "draining": gateway.draining,
            "uptime_s": round(time.monotonic() - monitor.started, 1),
            "in_flight": gateway.path.in_flight, "queued": len(queue) if queue is not None else 0,
            "nodes": len(nodes), "nodes_healthy": sum(1 for n in nodes if n["healthy"]),
            "memory_mb": _last(sampler, "memory_mb"), "cpu_percent": _last(sampler, "cpu_percent"),
            "requests_per_s": _last(sampler, "requests_per_s"),
            "ttft_p95_ms": _last(sampler, "ttft_p95_ms"),
            "signals": sampler.signals,
        },
        "nodes": nodes,
        "models": _models(view),
        "alerts": monitor.alerts.describe(now) if monitor.alerts is not None else [],
        "alerts_enabled": monitor.alerts is not None,
        "transfers": monitor.transfers.describe(),
        "flags": [{"name": f["name"], "variant": f["variant"], "percent": f["percent"],
                   "base": f["base"], "default": f["default"]} for f in gateway.flags.describe()],
    }
    if charts:
        doc["charts"] = sampler.charts()
    elif point:
        doc["point"] = sampler.point()
    return doc


def _last(sampler: Any, name: str) -> float | None:
    value = sampler.series[name].last()
    return None if value is None else round(value, 3)


def _node(gateway: Any, i: int) -> dict[str, Any]:
    view = gateway.view
    info = view.info[i] or {}
    loaded = [{"name": m.get("name"), "slots": int(m.get("slots", 0) or 0),
               "busy": int(m.get("busy", 0) or 0), "loading": bool(m.get("loading"))}
              for m in info.get("loaded", [])]
    rss = (info.get("memory") or {}).get("rss_bytes")
    updated = float(view.updated_at[i])
    return {
        "id": view.ids[i], "url": view.urls[i], "healthy": bool(view.healthy[i]),
        "draining": bool(view.draining[i]), "ejected": bool(view.ejected[i]),
        "breaker": gateway.resilience.outliers.state_name(i),
        "engine": info.get("engine"), "loaded": loaded,
        "models": sorted(view.model_names[m] for m, cell in enumerate(view.has) if cell[i]),
        "slots": int(info.get("slots", sum(m["slots"] for m in loaded)) or 0),
        "slots_busy": int(info.get("busy", sum(m["busy"] for m in loaded)) or 0),
        "queue_depth": int(view.queue_depth[i]), "in_flight": int(view.in_flight[i]),
        "served": int(view.served[i]),
        "memory_mb": round(rss / MB, 1) if rss else None,
        "cpu_percent": info.get("cpu_percent"),
        "last_error": view.last_error[i],
        "checked_s_ago": round(time.monotonic() - updated, 3) if updated else None,
    }


def _models(view: Any) -> list[dict[str, Any]]:
    present = view.present[: view.n]
    out = []
    for m, name in enumerate(view.model_names):
        has = np.flatnonzero(view.has[m][: view.n] & present)
        loaded = np.flatnonzero(view.loaded[m][: view.n] & present & view.healthy[: view.n])
        if not has.size and not loaded.size:
            continue
        out.append({"name": name, "size": int(view.model_size[m]) if m < len(view.model_size) else 0,
                    "nodes": [view.ids[i] for i in has],  # with its files, up or not
                    "loaded_on": [view.ids[i] for i in loaded]})  # loaded, on nodes up
    return sorted(out, key=lambda entry: entry["name"])
