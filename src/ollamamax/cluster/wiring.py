"""Cluster mode in the node and gateway processes, from the ``[cluster]`` configuration.

Kept here so `cli/node.py`, `cli/gateway.py` and `gateway/app.py` each need a line or two:
`join` puts a node agent in the cluster (etcd membership, LAN advertisement; None when
neither is configured), `ClusterMode` is a gateway's side (the etcd watch, LAN discovery, and
which nodes its health checks still poll), `give_drain_order` is ``ollamamax node drain ID
--etcd URLS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from ollamamax import __version__
from ollamamax.cluster import open_store
from ollamamax.cluster.discovery import (
    OLLAMA_SERVICE,
    Advertiser,
    DiscoveredBackends,
    LanDiscovery,
)
from ollamamax.cluster.membership import ClusterWatcher, NodeMembership, drain_node
from ollamamax.cluster.records import Capacity, DrainOrder, Layout, NodeRecord
from ollamamax.cluster.store import Store
from ollamamax.config import ClusterConfig, Config
from ollamamax.node import telemetry

if TYPE_CHECKING:
    from collections.abc import Callable

    from ollamamax.metrics import GatewayMetrics
    from ollamamax.node.agent import NodeAgent
    from ollamamax.scheduler.view import ClusterView
    from ollamamax.sync.service import SyncService

log = logging.getLogger(__name__)


def store(conf: ClusterConfig) -> Store:
    """The configured store: etcd with its endpoints and TLS files."""
    if conf.store != "etcd":
        return open_store(conf.store)
    return open_store("etcd", endpoints=list(conf.etcd_endpoints),
                      ca_file=conf.etcd_ca_file or None, cert_file=conf.etcd_cert_file or None,
                      key_file=conf.etcd_key_file or None)


# -- node ------------------------------------------------------------------------------------

def node_record(conf: Config, agent: NodeAgent) -> NodeRecord:
    node = conf.node
    memory = telemetry.memory()
    return NodeRecord(id=agent.node_id, url=agent.url, engine=agent.engine.name,
                      labels=tuple(node.labels), version=__version__,
                      capacity=Capacity(mem_total=memory["total_bytes"],
                                        max_loaded=node.max_loaded,
                                        num_parallel=node.num_parallel))


async def agent_telemetry(agent: NodeAgent) -> dict[str, Any]:
    """The document the agent's ``GET /telemetry`` serves."""
    await agent.engine.refresh_status()
    doc = telemetry.snapshot(agent.node_id, agent.engine.name, agent.url,
                             await agent.engine.tags(), agent.engine.load_status(),
                             agent.in_flight, agent.started)
    doc["draining"] = agent.draining
    doc["disk"] = telemetry.disk(agent.config.models_dir)  # where sync may place models
    return doc


class NodePresence:
    """A node in the cluster: its etcd membership and/or its LAN advertisement."""

    def __init__(self, membership: NodeMembership | None, advertiser: Advertiser | None) -> None:
        self.membership, self.advertiser = membership, advertiser
        self.sync: SyncService | None = None  # model sync (etcd only): sync/service.py

    async def drain(self, order: DrainOrder) -> None:
        """Tell every gateway now (the drain key), not at the next telemetry write."""
        if self.membership is not None:
            await self.membership.drain(order)

    async def leave(self) -> None:
        if self.advertiser is not None:
            with contextlib.suppress(Exception):  # best effort: the process is stopping
                await self.advertiser.stop()
        if self.sync is not None:
            with contextlib.suppress(Exception):  # best effort: the lease takes its keys
                await self.sync.stop()
        await _leave(self.membership)


async def join(conf: Config, agent: NodeAgent) -> NodePresence | None:
    """Register `agent` in the cluster store and/or advertise it on the LAN, as configured
    (None when neither is). `StoreError` if the store does not answer."""
    cluster = conf.cluster
    if cluster.store != "etcd" and not cluster.discovery:
        return None
    advertiser = None
    if cluster.discovery:
        advertiser = Advertiser(agent.node_id, agent.url, agent.engine.name,
                                service=cluster.discovery_service,
                                interfaces=cluster.discovery_interfaces)
        await advertiser.start()
    presence = NodePresence(await _register(conf, agent) if cluster.store == "etcd" else None,
                            advertiser)
    if presence.membership is not None:
        from ollamamax.sync import service  # model sync: placement, transfers, versions

        try:
            presence.sync = await service.start(conf, agent, presence.membership)
        except Exception:  # the node still serves; only sync is missing
            log.exception("unexpected error starting model sync on %s", agent.node_id)
        except BaseException:
            await presence.leave()
            raise
    return presence


async def leave(presence: NodePresence | None) -> None:
    if presence is not None:
        await presence.leave()


async def _register(conf: Config, agent: NodeAgent) -> NodeMembership:
    cluster = conf.cluster

    async def read() -> dict[str, Any]:
        return await agent_telemetry(agent)

    def drained(order: DrainOrder | None) -> None:
        if order is None:
            log.info("drain order withdrawn: taking requests again")
        else:
            log.info("drain order (%s): new requests are refused (503); %d in flight finish",
                     order.reason or order.by or "no reason", agent.in_flight)
        agent.draining = order is not None

    membership = NodeMembership(store(cluster), node_record(conf, agent), read,
                                layout=Layout(cluster.prefix), ttl_s=cluster.lease_ttl,
                                telemetry_interval=cluster.telemetry_interval, on_drain=drained)
    try:
        await membership.start()
    except BaseException:
        await membership.store.close()
        raise
    log.info("%s joined the cluster at %s (lease TTL %d s)", agent.node_id,
             ", ".join(cluster.etcd_endpoints), cluster.lease_ttl)
    return membership


async def _leave(membership: NodeMembership | None, timeout: float = 2.0) -> None:
    """Revoke the node's lease (its keys go at once), not waiting long for a store that is
    gone: the lease then expires by itself."""
    if membership is None:
        return
    try:
        async with asyncio.timeout(timeout):
            await membership.stop(revoke=True)
    except TimeoutError:
        log.warning("%s: the cluster store did not answer; its lease expires within %d s",
                    membership.node_id, membership.ttl_s)
    await membership.store.close()


# -- gateway ---------------------------------------------------------------------------------

class ClusterMode:
    """A gateway's side of cluster mode: the membership watch (``cluster.store = "etcd"``)
    and LAN discovery (``cluster.discovery``); each is None when not configured."""

    def __init__(self, conf: Config, view: ClusterView, metrics: GatewayMetrics,
                 on_change: Callable[[], None] | None = None) -> None:
        cluster = conf.cluster
        self.view = view
        self.watcher: ClusterWatcher | None = None
        self.discovery: LanDiscovery | None = None
        if cluster.store == "etcd":
            def store_up(up: bool) -> None:
                metrics.cluster_store_up.set(1 if up else 0)

            metrics.cluster_store_up.set(1)
            self.watcher = ClusterWatcher(store(cluster), view, layout=Layout(cluster.prefix),
                                          on_change=on_change, store_up=store_up,
                                          probe_interval=min(1.0, cluster.lease_ttl / 3))
        if cluster.discovery:
            table = self.watcher.table if self.watcher is not None else None
            backends = DiscoveredBackends(
                view, (lambda node_id: node_id in table.records) if table else None)
            self.discovery = LanDiscovery(backends, (OLLAMA_SERVICE, cluster.discovery_service),
                                          interfaces=cluster.discovery_interfaces,
                                          on_change=on_change)

    async def start(self) -> None:
        """The first listing of members is in the view when this returns (or the store did
        not answer within a few seconds)."""
        if self.watcher is not None:
            await self.watcher.start()
        if self.discovery is not None:
            await self.discovery.start()

    async def stop(self) -> None:
        if self.discovery is not None:
            await self.discovery.stop()
        if self.watcher is not None:
            await self.watcher.stop()
            await self.watcher.store.close()

    def polled(self) -> list[int]:
        """The nodes a gateway's health checks poll: all in embedded mode; in cluster mode
        only those the store does not describe (configured or discovered backends) and
        members that traffic found down (to see them up again)."""
        view = self.view
        if self.watcher is None:
            return view.present_nodes()
        table = self.watcher.table
        return [i for i in view.present_nodes() if not table.is_member(i) or not view.healthy[i]]


# -- ollamamax node drain ID --etcd URLS -----------------------------------------------------

async def give_drain_order(conf: ClusterConfig, node_id: str, *, undo: bool = False,
                           reason: str = "") -> str:
    """Put (or with `undo` delete) `node_id`'s drain order; one sentence saying what happened.
    `LookupError` if the node is not registered."""
    layout = Layout(conf.prefix)
    async with store(conf) as kv:
        if undo:
            gone = await kv.delete(layout.drain(node_id))
            return f"{node_id}: " + ("drain order withdrawn" if gone else "was not draining")
        order = DrainOrder(reason=reason, by="cli", at=time.time())
        record = await drain_node(kv, node_id, order, layout)
    return f"{node_id}: drain order given (node lease {record.lease:x})"
