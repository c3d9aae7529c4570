"""What a node tells gateways about itself (``GET /telemetry``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil

from ollamamax import __version__

_PROCESS = psutil.Process(os.getpid())


def memory() -> dict[str, int]:
    vm = psutil.virtual_memory()
    return {"rss_bytes": _PROCESS.memory_info().rss, "total_bytes": vm.total,
            "available_bytes": vm.available}


DISK_QUANTUM = 64 << 20  # free disk is reported in steps of this, so writes do not churn it


def disk(path: str) -> dict[str, int]:
    """Free and total bytes of the filesystem holding `path` (the model store), free rounded
    down to `DISK_QUANTUM`: what the sync planner reads to place models. The nearest existing
    parent is asked when the store does not exist yet; empty when nothing can be asked (the
    planner then assumes room rather than none)."""
    at = Path(os.path.expanduser(path))
    while not at.exists() and at != at.parent:
        at = at.parent
    try:
        usage = psutil.disk_usage(str(at))
    except OSError:
        return {}
    return {"free_bytes": usage.free // DISK_QUANTUM * DISK_QUANTUM, "total_bytes": usage.total}


def snapshot(node_id: str, engine: str, url: str, models: list[dict[str, Any]],
             status: dict[str, Any], in_flight: int, started: float) -> dict[str, Any]:
    """The telemetry document: identity, models, what is loaded with its slots, memory."""
    loaded = status.get("loaded", [])
    return {
        "node_id": node_id,
        "engine": engine,
        "url": url,
        "version": __version__,
        "models": [{"name": m["name"], "size": m.get("size", 0), "digest": m.get("digest", "")}
                   for m in models],
        "loaded": loaded,
        "busy": sum(m.get("busy", 0) for m in loaded),
        "slots": sum(m.get("slots", 0) for m in loaded),
        "queue_depth": status.get("queue_depth", 0),
        "max_queue": status.get("max_queue", 0),
        "max_loaded": status.get("max_loaded", 0),
        "num_parallel": status.get("num_parallel", 0),
        "num_ctx": status.get("num_ctx", 0),
        "in_flight": in_flight,
        "memory": memory(),
        "cpu_percent": _PROCESS.cpu_percent(None),  # this process, % of one core, since the last read
        "cpu_count": os.cpu_count() or 1,
        "uptime_s": round(time.monotonic() - started, 3),
    }
