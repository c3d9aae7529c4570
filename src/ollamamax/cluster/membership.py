"""Cluster membership on the store: nodes register themselves, gateways watch.

`NodeMembership` (in each node) grants a lease and keeps it alive (the keep-alives are the
heartbeat), puts the node's telemetry and record under it, publishes telemetry again when it
changes (at most once per `telemetry_interval`), and watches its own drain key. When the
lease is lost (the store was out of reach longer than the TTL), it registers again under the
next lease. A node that dies takes its keys with it when the lease expires.

`ClusterWatcher` (in each gateway) lists the prefix, then watches it from the next revision
and applies every change to the gateway's view through `MemberTable` (``view_sync.py``, the
pure part). After `Compacted` it lists again. A probe asks the store every `probe_interval`
whether it answers: while it does not, the view stays as it was (routing goes on from it),
``ollamamax_cluster_store_up`` is 0 and one line is logged; when it answers again, the watch
is restarted from the last revision applied, so the view catches up on what it missed.

`drain_node` gives a drain order (``ollamamax node drain ID --etcd URLS``): the key is put
under the node's own lease, so it vanishes with the node; the node sees it and stops taking
new work (``on_drain(order)``), and gateways stop routing new requests to it as soon as the
watch delivers it. Deleting the key withdraws the order (``on_drain(None)``); a key that went
with a lost lease is put back when the node registers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ollamamax.cluster.lease import LeaseKeeper, within
from ollamamax.cluster.records import DrainOrder, Layout, NodeRecord, decode_drain, encode
from ollamamax.cluster.store import EventType, KeyValue, Store, WatchEvent
from ollamamax.cluster.view_sync import MemberTable
from ollamamax.errors import Compacted, LeaseNotFound, StoreError
from ollamamax.scheduler.view import ClusterView

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
TelemetrySource = Callable[[], Awaitable[dict[str, Any]]]

RETRY_S = 0.5  # pause after a failed store call before trying again
DRAIN_PUT_S = 1.0  # a node draining itself does not wait longer for the store
MEMORY_QUANTUM = 64 << 20  # available memory is compared in steps of this many bytes
CPU_QUANTUM = 25.0  # the node process's CPU (% of a core) is compared in steps of this
VOLATILE = frozenset({"uptime_s", "memory", "cpu_percent"})  # compared coarsely or not at all


class NodeMembership:
    """One node's registration; see the module docstring."""

    def __init__(self, store: Store, record: NodeRecord, telemetry: TelemetrySource, *,
                 layout: Layout | None = None, ttl_s: int = 5, telemetry_interval: float = 2.0,
                 poll_interval: float | None = None,
                 on_drain: Callable[[DrainOrder | None], object] | None = None,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        if telemetry_interval <= 0:
            raise ValueError("telemetry_interval must be > 0")
        self.store, self.record, self.layout = store, record, layout or Layout()
        self.telemetry, self.on_drain = telemetry, on_drain
        self.ttl_s, self.telemetry_interval = ttl_s, telemetry_interval
        self.poll_interval = poll_interval or telemetry_interval / 4
        self._clock, self._sleep = clock, sleep
        self.keeper = LeaseKeeper(store, ttl_s, on_lost=self._lease_lost, clock=clock,
                                  sleep=sleep)
        self.drain_order: DrainOrder | None = None
        self.published = 0  # telemetry documents written
        self.registrations = 0
        self._last_sent: object = None  # the significant part of the last document written
        self._last_at = -float("inf")
        self._poked = asyncio.Event()
        self._lost = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def node_id(self) -> str:
        return self.record.id

    @property
    def registered(self) -> bool:
        """The node's keys are in the store under a lease that cannot have expired yet."""
        return self.registrations > 0 and not self._lost.is_set() and self.keeper.alive

    async def start(self) -> None:
        """Register under a new lease (`StoreError` if the store does not answer), then
        keep the registration, the telemetry and the drain watch going in tasks."""
        lease = await self.keeper.start()
        try:
            await self._register(lease)
        except BaseException:
            await self.keeper.stop(revoke=True)
            raise
        for loop in (self._publish_loop, self._poll_loop, self._reregister_loop,
                     self._drain_loop):
            self._tasks.append(asyncio.create_task(loop(), name=f"{loop.__name__}-{self.node_id}"))

    async def stop(self, *, revoke: bool = True) -> None:
        """Leave: with `revoke` the keys go at once; without, they expire with the lease."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.keeper.stop(revoke=revoke)

    def poke(self) -> None:
        """Telemetry may have changed: look now rather than at the next poll."""
        self._poked.set()

    async def drain(self, order: DrainOrder) -> None:
        """Drain this node on its own account (e.g. its admin API): gateways learn it from the
        drain key, as if ``ollamamax node drain`` had been run."""
        self._drained(order)
        lease = self.keeper.lease
        if not lease:
            return  # registering again puts it
        put = self.store.put(self.layout.drain(self.node_id), encode(order), lease)
        try:
            if not await _within(put, DRAIN_PUT_S, self._sleep):
                raise StoreError(f"no answer within {DRAIN_PUT_S:g} s")
        except StoreError as exc:  # its telemetry says it drains, a little later
            log.warning("%s: could not write its drain order (%s)", self.node_id, exc)

    # -- registration ----------------------------------------------------------------------

    async def _register(self, lease: int) -> None:
        """Telemetry first, then the record, so a gateway sees the node whole at once."""
        doc = await self._read_telemetry()
        if doc is not None:
            await self.store.put(self.layout.telemetry(self.node_id), encode(doc), lease)
            self._sent(doc)
        if self.drain_order is not None:
            await self.store.put(self.layout.drain(self.node_id), encode(self.drain_order), lease)
        await self.store.put(self.layout.node(self.node_id), encode(self.record), lease)
        self.registrations += 1
        log.info("%s registered under lease %x", self.node_id, lease)

    def _lease_lost(self, lease: int) -> None:
        self._lost.set()

    async def _reregister_loop(self) -> None:
        while True:
            await self._lost.wait()
            lease = await self.keeper.wait_lease()
            try:
                await self._register(lease)
            except LeaseNotFound:
                continue  # lost again already; the keeper grants the next one
            except StoreError as exc:
                log.warning("%s: registering again failed (%s); retrying", self.node_id, exc)
                await self._sleep(RETRY_S)
                continue
            if self.keeper.lease == lease:
                self._lost.clear()

    # -- telemetry -------------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        while True:
            await self._poked.wait()
            self._poked.clear()
            await self.publish_if_changed()

    async def _poll_loop(self) -> None:
        """Look at the telemetry every `poll_interval` even if nobody pokes (two long-lived
        tasks instead of a timer per wait: a benchmark runs a thousand of these)."""
        while True:
            await self._sleep(self.poll_interval)
            self._poked.set()

    async def publish_if_changed(self) -> bool:
        """Write the telemetry if it changed, waiting first for the rate limit; True if
        written."""
        doc = await self._read_telemetry()
        if doc is None or _significant(doc) == self._last_sent:
            return False
        wait = self._last_at + self.telemetry_interval - self._clock()
        if wait > 0:
            await self._sleep(wait)
            doc = await self._read_telemetry()  # the freshest, now that it may be sent
            if doc is None:
                return False
        lease = self.keeper.lease
        if not lease or self._lost.is_set():
            return False  # registering again writes it
        try:
            await self.store.put(self.layout.telemetry(self.node_id), encode(doc), lease)
        except StoreError as exc:  # LeaseNotFound included: the keeper will notice
            log.debug("%s: publishing telemetry failed (%s)", self.node_id, exc)
            return False
        self._sent(doc)
        return True

    def _sent(self, doc: dict[str, Any]) -> None:
        self._last_sent, self._last_at = _significant(doc), self._clock()
        self.published += 1

    async def _read_telemetry(self) -> dict[str, Any] | None:
        try:
            return await self.telemetry()
        except Exception as exc:  # noqa: BLE001 - an engine that cannot say is skipped
            log.warning("%s: reading telemetry failed: %s", self.node_id,
                        str(exc) or type(exc).__name__)
            return None

    # -- drain -----------------------------------------------------------------------------

    async def _drain_loop(self) -> None:
        key = self.layout.drain(self.node_id)
        while True:
            try:
                kvs, revision = await self.store.get_prefix(key)
                for kv in kvs:
                    if kv.key == key:
                        self._drained(_order(kv.value))
                async with contextlib.aclosing(self.store.watch_prefix(key, revision + 1)) as events:
                    async for event in events:
                        if event.key != key:
                            continue
                        if event.type is EventType.PUT:
                            self._drained(_order(event.value))
                        else:
                            await self._withdrawn()
            except Compacted:
                continue
            except StoreError as exc:
                log.debug("%s: drain watch failed (%s); retrying", self.node_id, exc)
                await self._sleep(RETRY_S)

    def _drained(self, order: DrainOrder) -> None:
        if self.drain_order is not None:
            return
        self.drain_order = order
        log.info("%s drains%s", self.node_id, f": {order.reason}" if order.reason else "")
        self._tell(order)

    async def _withdrawn(self) -> None:
        """The drain key was deleted: withdrawn (``node drain --undo``), unless it went with
        a lost lease (the record went too) and registering again put it back."""
        if self.drain_order is None:
            return
        record = await self.store.get(self.layout.node(self.node_id))
        if record is None or record.lease != self.keeper.lease:
            return
        if await self.store.get(self.layout.drain(self.node_id)) is not None:
            return
        self.drain_order = None
        log.info("%s: drain order withdrawn", self.node_id)
        self._tell(None)

    def _tell(self, order: DrainOrder | None) -> None:
        if self.on_drain is None:
            return
        try:
            self.on_drain(order)
        except Exception:
            log.exception("unexpected error in the drain callback of %s", self.node_id)


def _order(value: bytes) -> DrainOrder:
    """A drain order; one that cannot be read is still an order to drain."""
    try:
        return decode_drain(value)
    except ValueError:
        return DrainOrder(reason="an order that could not be read")


def _significant(doc: dict[str, Any]) -> object:
    """What must change for a document to be worth writing: everything but the uptime and
    the process's own memory, with available memory and CPU in coarse steps."""
    out = {k: v for k, v in doc.items() if k not in VOLATILE}
    memory = doc.get("memory")
    if isinstance(memory, dict):
        out["memory"] = (memory.get("total_bytes"),
                         int(memory.get("available_bytes") or 0) // MEMORY_QUANTUM)
    cpu = doc.get("cpu_percent")
    if isinstance(cpu, int | float):
        out["cpu_percent"] = int(cpu // CPU_QUANTUM)
    return out


async def _within(call: Awaitable[object], seconds: float, sleep: Sleep) -> bool:
    """Await `call` for at most `seconds` of the injected clock; False if it did not end
    (it is then cancelled). Its exception, if it raised one, propagates."""
    task = await within(call, seconds, sleep)
    if task is None:
        return False
    task.result()
    return True


async def drain_node(store: Store, node_id: str, order: DrainOrder,
                     layout: Layout | None = None) -> KeyValue:
    """Give `node_id` a drain order under its own lease; returns its record. `LookupError`
    if no such node is registered."""
    layout = layout or Layout()
    record = await store.get(layout.node(node_id))
    if record is None:
        raise LookupError(f"no node {node_id!r} is registered under {layout.prefix}")
    await store.put(layout.drain(node_id), encode(order), record.lease)
    return record


class ClusterWatcher:
    """A gateway's view, kept from the store; see the module docstring."""

    def __init__(self, store: Store, view: ClusterView, *, layout: Layout | None = None,
                 probe_interval: float = 1.0, on_change: Callable[[], None] | None = None,
                 on_event: Callable[[WatchEvent], None] | None = None,
                 store_up: Callable[[bool], None] | None = None,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self.store, self.view = store, view
        self.table = MemberTable(view, layout)
        self.prefix = self.table.layout.prefix
        self.probe_interval = probe_interval
        self.on_change, self.on_event, self._store_up = on_change, on_event, store_up
        self._clock, self._sleep = clock, sleep
        self.reachable = True  # the store answered the last probe
        self.loaded = asyncio.Event()  # the first listing is applied
        self.ticks = 0  # liveness: probes made
        self._follower: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._change_pending = False
        self._resume_from = 0  # the revision a watch starts from; 0: list first

    async def start(self, wait: float = 5.0) -> None:
        """Start following; return once the first listing is applied, or after `wait`
        seconds (the store is unreachable: the view fills when it answers)."""
        self._restart_follower()
        self._prober = asyncio.create_task(self._probe_loop(), name="cluster-probe")
        try:
            await asyncio.wait_for(asyncio.shield(self.loaded.wait()), wait)
        except TimeoutError:
            log.warning("the cluster store did not answer within %g s; starting with an empty "
                        "view that fills when it does", wait)

    async def stop(self) -> None:
        tasks = [t for t in (self._follower, self._prober) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._follower = self._prober = None

    # -- following the prefix ----------------------------------------------------------------

    def _restart_follower(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
        self._follower = asyncio.create_task(self._follow(), name="cluster-watch")

    async def _follow(self) -> None:
        while True:
            try:
                if not self._resume_from:
                    await self._list()
                async with contextlib.aclosing(
                        self.store.watch_prefix(self.prefix, self._resume_from)) as events:
                    async for event in events:
                        self._apply(event)
            except Compacted as exc:
                log.info("membership history compacted (%s); listing again", exc)
                self._resume_from = 0
            except StoreError as exc:
                log.debug("following the membership prefix failed (%s); retrying", exc)
                await self._sleep(RETRY_S)

    async def _list(self) -> None:
        kvs, revision = await self.store.get_prefix(self.prefix)
        for sentence in self.table.load(kvs, revision, self._clock()):
            log.info("%s", sentence)
        self._resume_from = revision + 1
        self.loaded.set()
        self._changed()

    def _apply(self, event: WatchEvent) -> None:
        # A watch started again starts from this event's revision, not the next: the rest of
        # the revision (a lease takes several keys in one) comes again, and applying an event
        # twice changes nothing.
        self._resume_from = event.mod_revision
        sentence = self.table.apply(event, self._clock())
        if sentence:
            log.info("%s", sentence)
        if self.on_event is not None:
            self.on_event(event)
        self._changed()

    def _changed(self) -> None:
        """Tell `on_change` once per turn of the loop, however many events came in it."""
        if self.on_change is None or self._change_pending:
            return
        self._change_pending = True
        asyncio.get_running_loop().call_soon(self._call_on_change)

    def _call_on_change(self) -> None:
        self._change_pending = False
        if self.on_change is not None:
            self.on_change()

    # -- is the store there? -----------------------------------------------------------------

    async def _probe_loop(self) -> None:
        while True:
            await self._sleep(self.probe_interval)
            self.ticks += 1
            try:
                seconds = max(1.0, self.probe_interval * 2)
                if not await _within(self.store.get(self.prefix + "probe"), seconds, self._sleep):
                    raise TimeoutError(f"no answer within {seconds:g} s")
            except (StoreError, TimeoutError) as exc:
                self._set_reachable(False, str(exc) or type(exc).__name__)
            else:
                self._set_reachable(True)

    def _set_reachable(self, up: bool, reason: str = "") -> None:
        if self._store_up is not None:
            self._store_up(up)
        if up == self.reachable:
            return
        self.reachable = up
        if not up:
            log.warning("the cluster store is unreachable (%s); routing goes on from the last "
                        "view of %d nodes", reason, len(self.view.present_nodes()))
            return
        log.info("the cluster store answers again; catching up from revision %d",
                 self.table.revision)
        self._restart_follower()  # a watch stream may have gone silent rather than broken
