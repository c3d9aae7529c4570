"""Model sync in a node in cluster mode: one `start` and one `stop` for ``cluster/wiring.py``.

`start` runs, on the node's membership lease and store connection:

- the transfer side (``sync/transfer.py`` `start_node_sync`: the `Fetcher`, the node's
  complete blobs announced as holder records);
- the `Executor` (``sync/executor.py``): version records of the node's models, and the
  planner's assignments run with that fetcher; with the ``ollama`` engine every synced model
  is installed into the Ollama behind the node (``sync/install.py``), and at start every model
  of the store that Ollama does not list by name;
- a `PlannerLoop` candidate (``sync/planner.py``): every node campaigns, one leads and plans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from ollamamax.errors import OllamaMaxError, StoreError
from ollamamax.models.store import ModelStore
from ollamamax.sync.executor import Executor
from ollamamax.sync.install import OllamaInstaller
from ollamamax.sync.planner import PlannerLoop
from ollamamax.sync.resolve import VersionRecord

if TYPE_CHECKING:
    from ollamamax.cluster.membership import NodeMembership
    from ollamamax.config import Config
    from ollamamax.node.agent import NodeAgent
    from ollamamax.sync.transfer import NodeSync

log = logging.getLogger(__name__)


class SyncService:
    def __init__(self, transfers: NodeSync, executor: Executor, planner: PlannerLoop,
                 installer: OllamaInstaller | None) -> None:
        self.transfers, self.executor, self.planner = transfers, executor, planner
        self.installer = installer
        self._planner_task: asyncio.Task[None] | None = None
        self._reconcile_task: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        tasks = [t for t in (self._planner_task, self._reconcile_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.planner.stop()
        await self.executor.stop()
        await self.transfers.stop()
        if self.installer is not None:
            await self.installer.close()


async def start(conf: Config, agent: NodeAgent, membership: NodeMembership) -> SyncService:
    """Start model sync in a node that joined the cluster (see the module docstring)."""
    from ollamamax.sync.transfer import start_node_sync  # the transfer side: aiohttp client etc.

    kv = membership.store

    def lease() -> int:
        return membership.keeper.lease if membership.keeper.alive else 0

    transfers = await start_node_sync(conf, agent, kv, lease)
    fetcher = transfers.fetcher
    installer = OllamaInstaller(conf.node.engine_url) if agent.engine.name == "ollama" else None

    async def announce(records: list[VersionRecord]) -> None:
        """New local models (an import or pull while running): their blobs to the swarm."""
        for record in records:
            for layer in record.layers():
                if fetcher.store.has_blob(layer["digest"]):
                    with contextlib.suppress(StoreError):
                        await fetcher.announce(layer["digest"])

    executor = Executor(fetcher.store, kv, agent.node_id, fetcher, lease=lease,
                        prefix=conf.cluster.prefix, installer=installer,
                        scan_interval=conf.sync.scan_interval,
                        parallel=conf.sync.parallel_assignments, on_publish=announce)
    planner = PlannerLoop(kv, agent.node_id, prefix=conf.cluster.prefix,
                          interval=conf.sync.plan_interval, default_replicas=conf.sync.replicas,
                          ttl_s=conf.cluster.lease_ttl)
    service = SyncService(transfers, executor, planner, installer)
    try:
        await executor.start()
    except BaseException:
        await service.stop()
        raise
    service._planner_task = asyncio.create_task(planner.run(), name="sync-planner")
    if installer is not None:
        service._reconcile_task = asyncio.create_task(
            _reconcile(installer, fetcher.store, agent.node_id), name="sync-install")
    log.info("%s: model sync started (%s)", agent.node_id, _installs(installer))
    return service


async def _reconcile(installer: OllamaInstaller, store: ModelStore, node_id: str) -> None:
    """The store's models the Ollama behind the node lacks, installed once at start."""
    try:
        for sentence in await installer.reconcile(store):
            log.info("%s: %s", node_id, sentence)
    except OllamaMaxError as exc:
        log.warning("%s: could not bring the Ollama behind up to date: %s", node_id, exc)


def _installs(installer: OllamaInstaller | None) -> str:
    return f"installing synced models into {installer.base}" if installer else "sim/local store"


async def stop(service: SyncService | None) -> None:
    if service is not None:
        await service.stop()
