"""The sync planner: compares desired placement with what nodes hold and assigns transfers.

`plan` is the pure core: from the live nodes (records and telemetry), every version record,
the desired records and the assignments already written, it returns the assignments to put
and to delete, and one sentence per decision. For each model it

1. resolves the winning version (``sync/resolve.py``, the model's policy);
2. sends the winner to every node holding another version under that name (a conflict is
   resolved everywhere, not only where replicas are wanted) and to every live pinned node;
3. tops up to the wanted replica count among eligible nodes (pinned ids, required labels),
   counting those already holding or fetching the winner first, then choosing the nodes with
   room: enough free disk for the bytes they lack (estimated with each node's blob Bloom
   filter), memory for the model, then the most free disk and memory, then the id.

Models held identically by every live node are skipped after one merkle-root comparison per
node unless a desired record names them. The planner never removes a copy: surplus replicas
stay, and a node replaces a losing version only once the winner is complete there.

`PlannerLoop` is the thin shell: one leader in the cluster (``cluster/election.py``), which
reads the store every ``sync.plan_interval`` seconds, plans, and writes the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ollamamax.cluster.election import Election
from ollamamax.cluster.records import Layout, decode_record, decode_telemetry
from ollamamax.cluster.store import Store
from ollamamax.errors import StoreError
from ollamamax.sync.desired import Desired, SyncKeys, read_all
from ollamamax.sync.resolve import (
    Resolution,
    Summary,
    VersionRecord,
    divergent_models,
    missing_bytes,
    resolve,
    summarize,
)
from ollamamax.sync.resolve import (
    decode_record as decode_version,
)

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
ELECTION = "sync-planner"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What the planner knows of a live node; None: its telemetry did not say."""

    id: str
    labels: tuple[str, ...] = ()
    free_disk: int | None = None
    mem_total: int | None = None
    mem_available: int | None = None


class Assignment(msgspec.Struct, frozen=True, kw_only=True):
    """The value of ``sync/assign/<node>/<model>``: the contract's digest and manifest, plus
    the winner's origin and time, which the node's version record keeps once it holds it."""

    digest: str
    manifest: str
    origin: str = ""
    hlc: tuple[int, int, str] = (0, 0, "")

    @classmethod
    def of(cls, record: VersionRecord) -> Assignment:
        return cls(digest=record.digest, manifest=record.manifest, origin=record.origin,
                   hlc=record.hlc)

    def record(self) -> VersionRecord:
        return VersionRecord(digest=self.digest, manifest=self.manifest, origin=self.origin,
                             hlc=self.hlc)


_assignment_decoder = msgspec.json.Decoder(Assignment)


def decode_assignment(value: bytes) -> Assignment:
    return _assignment_decoder.decode(value)


@dataclass(slots=True)
class Plan:
    put: dict[tuple[str, str], Assignment] = field(default_factory=dict)  # (node, model) ->
    delete: list[tuple[str, str]] = field(default_factory=list)  # (node, model)
    notes: list[str] = field(default_factory=list)
    resolutions: dict[str, Resolution] = field(default_factory=dict)

    def sentence(self) -> str:
        if not self.put and not self.delete:
            return "placement as desired" + (f" ({'; '.join(self.notes)})" if self.notes else "")
        return "; ".join(self.notes) or f"{len(self.put)} assigned, {len(self.delete)} withdrawn"


def plan(nodes: Mapping[str, NodeInfo], records: Mapping[str, Mapping[str, VersionRecord]],
         desired: Mapping[str, Desired], assigned: Mapping[tuple[str, str], str], *,
         default_replicas: int = 1) -> Plan:
    """See the module docstring. `records`: model -> node -> record; `assigned`: (node, model)
    -> digest of the assignments in the store. Deterministic in its inputs."""
    out = Plan()
    live_records = {m: {n: r for n, r in by_node.items() if n in nodes}
                    for m, by_node in records.items()}
    fleet = _Fleet.of(nodes, live_records, assigned)
    models = divergent_models(fleet.summaries) | set(desired)
    wanted: dict[tuple[str, str], Assignment] = {}
    for model in sorted(models):
        wish = desired.get(model, Desired())
        copies = live_records.get(model, {})
        res = resolve(model, copies, wish.policy, wish.digest)
        out.resolutions[model] = res
        if res.winner is None:
            if copies or model in desired:
                out.notes.append(f"{model}: {res.note}")
            continue
        for node in _targets(model, wish, res, fleet, default_replicas, out.notes):
            wanted[(node, model)] = Assignment.of(res.winner)
    for key, assignment in sorted(wanted.items()):
        if assigned.get(key) != assignment.digest:
            out.put[key] = assignment
            out.notes.append(f"assigned {key[1]} ({assignment.digest[7:19]}) to {key[0]}")
    for key in sorted(assigned):
        if key not in wanted:
            out.delete.append(key)
    return out


@dataclass(frozen=True, slots=True)
class _Fleet:
    """What every model's placement reads, computed once per plan."""

    nodes: Mapping[str, NodeInfo]
    summaries: Mapping[str, Summary]
    order: tuple[str, ...]  # most free disk, then most available memory, then id
    blob_holders: Mapping[str, frozenset[str]]  # blob -> nodes with a version naming it
    assigned: Mapping[str, Mapping[str, str]]  # model -> node -> assigned digest

    @classmethod
    def of(cls, nodes: Mapping[str, NodeInfo],
           records: Mapping[str, Mapping[str, VersionRecord]],
           assigned: Mapping[tuple[str, str], str]) -> _Fleet:
        held: dict[str, dict[str, str]] = {n: {} for n in nodes}
        blobs: dict[str, set[str]] = {n: set() for n in nodes}
        holders: dict[str, set[str]] = {}
        for model, by_node in records.items():
            for node, record in by_node.items():
                held[node][model] = record.digest
                for digest, _ in record.blobs():
                    blobs[node].add(digest)
                    holders.setdefault(digest, set()).add(node)
        by_model: dict[str, dict[str, str]] = {}
        for (node, model), digest in assigned.items():
            by_model.setdefault(model, {})[node] = digest
        order = sorted(nodes, key=lambda n: (-_known(nodes[n].free_disk),
                                             -_known(nodes[n].mem_available), n))
        return cls(nodes, {n: summarize(held[n], blobs[n]) for n in sorted(nodes)},
                   tuple(order), {b: frozenset(ns) for b, ns in holders.items()}, by_model)


def _known(value: int | None) -> int:
    return -1 if value is None else value


def _targets(model: str, wish: Desired, res: Resolution, fleet: _Fleet,
             default_replicas: int, notes: list[str]) -> list[str]:
    """The nodes that should fetch the winner of `model` now."""
    assert res.winner is not None
    nodes = fleet.nodes
    current = set(res.current)
    targets = set(res.stale)  # a conflict: they converge on the winner
    if res.stale:
        notes.append(f"{model}: conflict resolved ({res.policy}) for {res.digest[7:19]}, "
                     f"replacing the copies on {', '.join(res.stale)}")
    targets.update(n for n in wish.nodes if n in nodes and n not in current)

    def eligible(node: str) -> bool:
        return (not wish.nodes or node in wish.nodes) and all(
            label in nodes[node].labels for label in wish.labels)

    targets.update(n for n, d in fleet.assigned.get(model, {}).items()
                   if d == res.digest and n in nodes and n not in current and eligible(n))
    have = len({n for n in current | targets if eligible(n)})
    need = wish.wanted(default_replicas) - have
    if need <= 0:
        return sorted(targets)
    chosen = _choose(model, need, res.winner, fleet, current | targets, eligible, notes)
    if len(chosen) < need:
        notes.append(f"{model}: wants {wish.wanted(default_replicas)} replicas, "
                     f"{have + len(chosen)} eligible node(s) can hold it")
    return sorted(targets | set(chosen))


def _choose(model: str, need: int, winner: VersionRecord, fleet: _Fleet, taken: set[str],
            eligible: Callable[[str], bool], notes: list[str]) -> list[str]:
    """The `need` best eligible nodes for `winner` not in `taken`, by `_rank`. Nodes already
    holding some of its blobs (few) are ranked one by one, their lacking bytes read from
    their Bloom filters; the others all lack everything, so `fleet.order` already ranks them
    and the walk stops after `need` of them that have room and memory."""
    blobs, size = winner.blobs(), winner.size()
    total = sum(s for _, s in blobs)
    partial = {n for digest, _ in blobs for n in fleet.blob_holders.get(digest, ())} - taken
    ranked, short, full = [], [], []
    for node in sorted(partial):
        lacking = missing_bytes(fleet.summaries.get(node), blobs)
        if eligible(node) and _room(fleet.nodes[node], lacking, full, node):
            ranked.append((_rank(fleet.nodes[node], lacking, size), node))
    fitting = 0
    for node in fleet.order:
        if fitting >= need:
            break
        if node in taken or node in partial or not eligible(node):
            continue
        info = fleet.nodes[node]
        if not _room(info, total, full, node):
            continue
        rank = _rank(info, total, size)
        (short if rank[0] else ranked).append((rank, node))
        fitting += not rank[0]
    if full:
        notes.append(f"{model}: no room on {', '.join(full[:3])}"
                     f"{f' and {len(full) - 3} more' if len(full) > 3 else ''}")
    return [node for _, node in sorted(ranked + short[:need])[:need]]


def _room(info: NodeInfo, lacking: int, full: list[str], node: str) -> bool:
    """The node has the free disk for what it lacks (unknown: assumed); else noted in `full`."""
    if info.free_disk is not None and info.free_disk < lacking:
        full.append(node)
        return False
    return True


def _rank(info: NodeInfo, lacking: int, size: int) -> tuple[Any, ...]:
    """Sort key: nodes with memory for the model first, then those lacking fewer bytes, then
    the most free disk and memory."""
    mem_short = info.mem_total is not None and info.mem_total < size
    return (mem_short, lacking, -_known(info.free_disk), -_known(info.mem_available))


# -- the shell -------------------------------------------------------------------------------


def node_info(record: bytes, telemetry: bytes | None) -> NodeInfo:
    rec = decode_record(record)
    doc: dict[str, Any] = {}
    if telemetry:
        with contextlib.suppress(msgspec.DecodeError):
            doc = decode_telemetry(telemetry)
    disk, memory = doc.get("disk") or {}, doc.get("memory") or {}
    return NodeInfo(rec.id, tuple(rec.labels), disk.get("free_bytes"),
                    memory.get("total_bytes") or rec.capacity.mem_total or None,
                    memory.get("available_bytes"))


async def read_state(kv: Store, layout: Layout, keys: SyncKeys) -> tuple[
        dict[str, NodeInfo], dict[str, dict[str, VersionRecord]], dict[str, Desired],
        dict[tuple[str, str], str]]:
    """Everything `plan` reads, from the store."""
    node_kvs, _ = await kv.get_prefix(layout.prefix + "nodes/")
    tele_kvs, _ = await kv.get_prefix(layout.prefix + "telemetry/")
    telemetry = {kv_.key.rpartition("/")[2]: kv_.value for kv_ in tele_kvs}
    nodes = {}
    for item in node_kvs:
        node_id = item.key.rpartition("/")[2]
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            nodes[node_id] = node_info(item.value, telemetry.get(node_id))
    return nodes, await read_versions(kv, keys), await read_all(kv, keys), \
        await read_assignments(kv, keys)


async def read_versions(kv: Store, keys: SyncKeys) -> dict[str, dict[str, VersionRecord]]:
    items, _ = await kv.get_prefix(keys.versions_prefix)
    out: dict[str, dict[str, VersionRecord]] = {}
    for item in items:
        parts = keys.split(item.key, keys.versions_prefix)
        if parts is None:
            continue
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            out.setdefault(parts[0], {})[parts[1]] = decode_version(item.value)
    return out


async def read_assignments(kv: Store, keys: SyncKeys) -> dict[tuple[str, str], str]:
    items, _ = await kv.get_prefix(keys.assign_prefix)
    out = {}
    for item in items:
        parts = keys.split(item.key, keys.assign_prefix)
        if parts is None:
            continue
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            out[parts] = decode_assignment(item.value).digest
    return out


class PlannerLoop:
    """A planner candidate on every node; the elected one plans every `interval` seconds."""

    def __init__(self, kv: Store, node_id: str, *, prefix: str, interval: float = 1.0,
                 default_replicas: int = 1, ttl_s: int = 5, sleep: Sleep = asyncio.sleep) -> None:
        self.kv, self.node_id, self.interval = kv, node_id, interval
        self.layout, self.keys = Layout(prefix), SyncKeys(prefix)
        self.default_replicas = default_replicas
        self.election = Election(kv, ELECTION, node_id, ttl_s, sleep=sleep)
        self._sleep = sleep
        self.ticks = 0
        self.last = ""  # the last tick's sentence

    async def run(self) -> None:
        while True:
            try:
                await self.election.campaign()
                while self.election.is_leader:
                    await self.tick()
                    await self._sleep(self.interval)
            except StoreError as exc:
                log.warning("sync planner on %s: %s; retrying", self.node_id, exc)
                await self._sleep(self.interval)

    async def tick(self) -> str:
        """Plan once and write the difference; the sentence saying what happened."""
        nodes, records, desired, assigned = await read_state(self.kv, self.layout, self.keys)
        result = plan(nodes, records, desired, assigned, default_replicas=self.default_replicas)
        for (node, model), assignment in result.put.items():
            await self.kv.put(self.keys.assign(node, model), msgspec.json.encode(assignment))
        for node, model in result.delete:
            await self.kv.delete(self.keys.assign(node, model))
        self.ticks += 1
        sentence = result.sentence()
        if sentence != self.last:
            log.info("sync planner: %s", sentence)
        self.last = sentence
        return sentence

    async def stop(self) -> None:
        with contextlib.suppress(StoreError):
            await self.election.resign()
