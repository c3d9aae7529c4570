"""``ollamamax models status``: where every model is, which version wins, what is moving.

`rows` is the pure part: from the version records, desired records, assignments and progress
records (``sync/progress/<node>/<digest>``: ``{"done", "total"}`` bytes) it makes one row per
model; `read` gathers them from the store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from ollamamax.cluster.store import Store
from ollamamax.sync.desired import Desired, SyncKeys, read_all
from ollamamax.sync.planner import read_assignments, read_versions
from ollamamax.sync.resolve import VersionRecord, resolve


@dataclass(frozen=True, slots=True)
class StatusRow:
    model: str
    policy: str
    wanted: str  # "3", "pinned: a,b", "-" (no desired record)
    digest: str  # the winner's digest, "" if none
    holders: tuple[str, ...]  # nodes holding the winner
    conflicts: tuple[str, ...]  # "node: digest" of nodes holding another version
    moving: tuple[str, ...]  # "node 45%" for transfers and "node queued" for assignments


def rows(records: Mapping[str, Mapping[str, VersionRecord]], desired: Mapping[str, Desired],
         assigned: Mapping[tuple[str, str], str],
         progress: Mapping[tuple[str, str], Mapping[str, Any]], default_replicas: int = 1,
         ) -> list[StatusRow]:
    out = []
    for model in sorted(set(records) | set(desired)):
        wish = desired.get(model)
        res = resolve(model, records.get(model, {}), wish.policy if wish else "newest",
                      wish.digest if wish else "")
        blobs = {layer["digest"] for layer in res.winner.layers()} if res.winner else set()
        moving = []
        for node, assigned_model in sorted(assigned):
            if assigned_model != model:
                continue
            done = total = 0
            for (p_node, p_digest), p in progress.items():
                if p_node == node and p_digest in blobs:
                    done, total = done + int(p.get("done", 0)), total + int(p.get("total", 0))
            moving.append(f"{node} {100 * done // total}%" if total else f"{node} queued")
        out.append(StatusRow(
            model=model, policy=res.policy, wanted=_wanted(wish, default_replicas),
            digest=res.digest, holders=res.current,
            conflicts=tuple(f"{n}: {d[7:19]}" for d, nodes in res.holders.items()
                            if d != res.digest for n in nodes),
            moving=tuple(moving)))
    return out


def _wanted(wish: Desired | None, default_replicas: int) -> str:
    if wish is None:
        return "-"
    parts = [str(wish.wanted(default_replicas))]
    if wish.nodes:
        parts.append("on " + ",".join(wish.nodes))
    if wish.labels:
        parts.append("labels " + ",".join(wish.labels))
    return " ".join(parts)


async def read(kv: Store, keys: SyncKeys, default_replicas: int = 1) -> list[StatusRow]:
    items, _ = await kv.get_prefix(keys.progress_prefix)
    progress = {}
    for item in items:
        parts = keys.split(item.key, keys.progress_prefix)
        if parts is not None:
            with contextlib.suppress(msgspec.DecodeError):
                doc = msgspec.json.decode(item.value)
                if isinstance(doc, dict):
                    progress[parts] = doc
    return rows(await read_versions(kv, keys), await read_all(kv, keys),
                await read_assignments(kv, keys), progress, default_replicas)
