"""NodeMembership and ClusterWatcher on the embedded store, in virtual time: registration,
telemetry at a bounded rate, a dead node leaving, drain, re-registration after a lost lease,
a gateway cut off from the store, and re-listing after a compaction."""

from __future__ import annotations

import logging

import pytest

from ollamamax.cluster.membership import ClusterWatcher, NodeMembership, drain_node
from ollamamax.cluster.records import DrainOrder, Layout, NodeRecord
from ollamamax.scheduler.view import ClusterView

from .conftest import settle

LAYOUT = Layout("om/")
MODEL = "m:1b"


class Telemetry:
    """A node's telemetry that a test changes; counts reads."""

    def __init__(self) -> None:
        self.busy = 0
        self.uptime = 0.0
        self.reads = 0
        self.fail = False

    async def __call__(self) -> dict:
        self.reads += 1
        if self.fail:
            raise RuntimeError("engine is gone")
        self.uptime += 1  # changes on every read, and must not count as news
        return {"engine": "sim", "models": [{"name": MODEL, "size": 10}],
                "loaded": [{"name": MODEL, "slots": 4, "busy": self.busy, "size": 10}],
                "queue_depth": 0, "uptime_s": self.uptime, "cpu_percent": self.uptime % 7,
                "memory": {"total_bytes": 1 << 34, "available_bytes": (1 << 33) + self.busy}}


def member(store, fake, node_id="n1", telemetry=None, **kw) -> NodeMembership:
    record = NodeRecord(id=node_id, url=f"http://127.0.0.1:{1000 + len(node_id)}", engine="sim")
    return NodeMembership(store, record, telemetry or Telemetry(), layout=LAYOUT,
                          clock=fake.clock, sleep=fake.sleep, **{"ttl_s": 3, **kw})


def watcher(store, fake, view=None, **kw) -> ClusterWatcher:
    return ClusterWatcher(store, view or ClusterView(), layout=LAYOUT, clock=fake.clock,
                          sleep=fake.sleep, **kw)


def busy(view: ClusterView, node_id: str) -> int:
    return int(view.reported_busy[view.model_id(MODEL)][view.node(node_id)])


async def test_a_node_registers_and_a_watcher_sees_it_whole(store, fake) -> None:
    gw = watcher(store, fake)
    await gw.start()
    node = member(store, fake)
    await node.start()
    await settle()
    view = gw.view
    i = view.node("n1")
    assert view.routable[i] and view.urls[i] == "http://127.0.0.1:1002"
    assert view.loaded[view.model_id(MODEL)][i]  # telemetry came with the record
    assert node.registered
    kv = await store.get(LAYOUT.node("n1"))
    assert kv is not None and kv.lease == node.keeper.lease
    await node.stop()  # revoked: gone at once
    await settle()
    assert not view.present[i]
    await gw.stop()


async def test_a_gateway_started_later_lists_what_is_there(store, fake) -> None:
    node = member(store, fake)
    await node.start()
    gw = watcher(store, fake)
    await gw.start()
    assert gw.view.routable[gw.view.node("n1")]
    await node.stop()
    await gw.stop()


async def test_telemetry_is_written_when_it_changes_and_at_most_once_per_interval(store, fake) -> None:
    gw = watcher(store, fake)
    await gw.start()
    tele = Telemetry()
    node = member(store, fake, telemetry=tele, telemetry_interval=2.0)
    await node.start()
    assert node.published == 1
    await fake.advance(10, step=0.25)  # polled 40 times; only the uptime moved
    assert node.published == 1 and tele.reads > 20
    tele.busy = 1
    node.poke()
    await fake.advance(0.01)
    assert node.published == 2 and busy(gw.view, "n1") == 1  # at once: the last was long ago
    for n in range(2, 12):  # a change every 0.1 s for a second
        tele.busy = n
        node.poke()
        await fake.advance(0.1)
    assert node.published == 2  # held back by the rate limit...
    await fake.advance(1.0, step=0.1)
    assert node.published == 3 and busy(gw.view, "n1") == 11  # ...then the freshest is sent
    await node.stop()
    await gw.stop()


async def test_a_dead_node_leaves_when_its_lease_expires(store, fake) -> None:
    gw = watcher(store, fake)
    await gw.start()
    node = member(store, fake, ttl_s=3)
    await node.start()
    await fake.advance(10, step=0.5)
    i = gw.view.node("n1")
    assert gw.view.present[i]  # the keep-alives hold it
    await node.stop(revoke=False)  # dies: no goodbye
    await fake.advance(2.9, step=0.1)
    assert gw.view.present[i]
    await fake.advance(0.2, step=0.1)
    assert not gw.view.present[i]
    await gw.stop()


async def test_a_node_cut_off_from_the_store_registers_again_under_a_new_lease(link, fake,
                                                                            store) -> None:
    gw = watcher(store, fake)
    await gw.start()
    conn = link()
    node = member(conn, fake, ttl_s=3)
    await node.start()
    first = node.keeper.lease
    conn.cut()
    await fake.advance(4, step=0.1)  # the lease expired in the store: the node left
    assert not gw.view.present[gw.view.node("n1")] and not node.registered
    conn.heal()
    await fake.advance(1, step=0.1)
    assert node.registered and node.keeper.lease not in (0, first)
    assert node.registrations == 2
    assert gw.view.routable[gw.view.node("n1")]
    await node.stop()
    await gw.stop()


async def test_drain_reaches_the_node_and_every_gateway_and_survives_a_new_lease(link, fake,
                                                                                store) -> None:
    gateways = [watcher(store, fake) for _ in range(2)]
    for gw in gateways:
        await gw.start()
    orders: list[DrainOrder] = []
    conn = link()
    node = member(conn, fake, on_drain=orders.append)
    await node.start()
    other = member(store, fake, node_id="n2")
    await other.start()
    record = await drain_node(store, "n1", DrainOrder(reason="maintenance", by="cli"), LAYOUT)
    assert record.lease == node.keeper.lease
    await fake.advance(0.1)
    assert [o.reason for o in orders] == ["maintenance"]
    for gw in gateways:
        i = gw.view.node("n1")
        assert gw.view.draining[i] and not gw.view.routable[i]
        assert gw.view.routable[gw.view.node("n2")]
    # the drain key went with the lost lease; the node puts it back when it registers again
    conn.cut()
    await fake.advance(4, step=0.1)
    conn.heal()
    await fake.advance(1, step=0.1)
    assert node.registrations == 2 and len(orders) == 1
    assert gateways[0].view.draining[gateways[0].view.node("n1")]
    assert (await store.get(LAYOUT.drain("n1"))).lease == node.keeper.lease
    for x in (node, other, *gateways):
        await x.stop()


async def test_a_withdrawn_drain_order_reaches_the_node_and_the_gateways(store, fake) -> None:
    gw = watcher(store, fake)
    await gw.start()
    orders: list[DrainOrder | None] = []
    node = member(store, fake, on_drain=orders.append)
    await node.start()
    await drain_node(store, "n1", DrainOrder(by="cli"), LAYOUT)
    await settle()
    assert gw.view.draining[gw.view.node("n1")]
    await store.delete(LAYOUT.drain("n1"))
    await settle()
    assert orders == [DrainOrder(by="cli"), None] and node.drain_order is None
    assert gw.view.routable[gw.view.node("n1")]
    await node.stop()
    await gw.stop()


async def test_a_node_can_drain_itself(store, fake) -> None:
    gw = watcher(store, fake)
    await gw.start()
    node = member(store, fake)
    await node.start()
    await node.drain(DrainOrder(reason="SIGTERM", by="signal"))
    await settle()
    assert gw.view.draining[gw.view.node("n1")] and node.drain_order.by == "signal"
    await node.stop()
    await gw.stop()


async def test_draining_an_unknown_node_says_so(store) -> None:
    with pytest.raises(LookupError, match="no node 'ghost'"):
        await drain_node(store, "ghost", DrainOrder(), LAYOUT)


async def test_a_gateway_cut_off_keeps_its_view_then_catches_up(link, fake, store, caplog) -> None:
    states: list[bool] = []
    conn = link()
    gw = watcher(conn, fake, probe_interval=1.0, store_up=states.append)
    await gw.start()
    node = member(store, fake)
    await node.start()
    await settle()
    n1 = gw.view.node("n1")
    conn.cut()
    with caplog.at_level(logging.INFO, logger="ollamamax.cluster.membership"):
        await fake.advance(5, step=0.5)
        await node.stop()  # leaves while the gateway cannot see it
        late = member(store, fake, node_id="n2")
        await late.start()
        await fake.advance(5, step=0.5)
        assert not gw.reachable and states[-1] is False
        assert gw.view.routable[n1] and "n2" not in gw.view.index  # the last view, unchanged
        conn.heal()
        await fake.advance(3, step=0.5)
    assert gw.reachable and states[-1] is True
    assert not gw.view.present[n1] and gw.view.routable[gw.view.node("n2")]
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1  # logged once, not per probe
    assert any("answers again" in r.getMessage() for r in caplog.records)
    await late.stop()
    await gw.stop()


async def test_a_compacted_history_makes_the_watcher_list_again(link, fake, store,
                                                               caplog) -> None:
    conn = link()
    gw = watcher(conn, fake)
    await gw.start()
    nodes = [member(store, fake, node_id=f"n{i}") for i in range(3)]
    for node in nodes[:2]:
        await node.start()
    await settle()
    conn.cut()  # the watcher falls behind...
    await nodes[0].stop()
    await nodes[2].start()
    _, revision = await store.get_prefix("")
    await store.compact(revision)  # ...and the history it needs is gone
    conn.heal()
    with caplog.at_level(logging.INFO, logger="ollamamax.cluster.membership"):
        await fake.advance(3, step=0.5)
    assert "compacted" in caplog.text and "listing again" in caplog.text
    view = gw.view
    assert not view.present[view.node("n0")]
    assert view.routable[view.node("n1")] and view.routable[view.node("n2")]
    for node in nodes[1:]:
        await node.stop()
    await gw.stop()


async def test_telemetry_that_cannot_be_read_is_skipped_and_logged(store, fake, caplog) -> None:
    tele = Telemetry()
    node = member(store, fake, telemetry=tele)
    await node.start()
    tele.fail = True
    await fake.advance(1, step=0.5)
    assert node.published == 1 and node.registered
    assert "reading telemetry failed: engine is gone" in caplog.text
    await node.stop()


async def test_on_change_is_called_once_per_burst(store, fake) -> None:
    calls: list[int] = []
    gw = watcher(store, fake, on_change=lambda: calls.append(1))
    await gw.start()
    calls.clear()
    for i in range(5):
        await store.put(LAYOUT.node(f"x{i}"), b'{"id": "x%d", "url": "http://h:1"}' % i)
    await settle()
    assert len(gw.view.present_nodes()) == 5
    assert 1 <= len(calls) < 5
    await gw.stop()
