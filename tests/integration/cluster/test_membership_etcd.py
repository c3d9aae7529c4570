"""NodeMembership and ClusterWatcher on a real etcd, in this process: registration with
telemetry, a node dying (its lease expires), a drain order given as the CLI gives it, and a
gateway's watch riding out an etcd restart."""

from __future__ import annotations

import time

import pytest

from ollamamax.cluster.etcd import EtcdStore
from ollamamax.cluster.membership import ClusterWatcher, NodeMembership
from ollamamax.cluster.records import DrainOrder, Layout, NodeRecord
from ollamamax.cluster.wiring import give_drain_order
from ollamamax.config import ClusterConfig
from ollamamax.scheduler.view import ClusterView
from ollamamax.testing.etcd import missing_reason

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]

MODEL = "m:1b"


class Telemetry:
    def __init__(self) -> None:
        self.busy = 0

    async def __call__(self) -> dict:
        return {"models": [{"name": MODEL, "size": 1}],
                "loaded": [{"name": MODEL, "slots": 8, "busy": self.busy}]}


def member(store, prefix: str, node_id: str, **kw) -> NodeMembership:
    record = NodeRecord(id=node_id, url=f"http://127.0.0.1:1{len(node_id)}", engine="sim")
    return NodeMembership(store, record, kw.pop("telemetry", Telemetry()), layout=Layout(prefix),
                          ttl_s=2, telemetry_interval=0.2, **kw)


async def test_nodes_register_report_drain_and_die_on_etcd(etcd, eventually) -> None:
    prefix = "m1/"
    async with EtcdStore(etcd.urls) as nodes_store, EtcdStore(etcd.urls) as gw_store:
        view = ClusterView()
        watcher = ClusterWatcher(gw_store, view, layout=Layout(prefix))
        await watcher.start()
        telemetry = Telemetry()
        drains: list[DrainOrder | None] = []
        members = [member(nodes_store, prefix, "a", telemetry=telemetry, on_drain=drains.append),
                   member(nodes_store, prefix, "b")]
        for m in members:
            await m.start()

        async def both() -> bool:
            return {view.ids[i] for i in view.present_nodes() if view.routable[i]} == {"a", "b"}

        await eventually(both, 2.0, "both nodes routable")
        telemetry.busy = 5
        members[0].poke()
        model = view.model_id(MODEL)

        async def reported() -> bool:
            return int(view.reported_busy[model][view.node("a")]) == 5

        await eventually(reported, 2.0, "telemetry in the view")

        said = await give_drain_order(ClusterConfig(store="etcd", etcd_endpoints=tuple(etcd.urls),
                                                    prefix=prefix), "a", reason="disk swap")
        assert said.startswith("a: drain order given")

        async def drained() -> bool:
            return bool(drains) and bool(view.draining[view.node("a")])

        await eventually(drained, 2.0, "drain order seen by node and gateway")
        assert drains[0].reason == "disk swap" and drains[0].by == "cli"

        await members[1].stop(revoke=False)  # dies: its lease runs out
        died = time.monotonic()

        async def gone() -> bool:
            return not view.present[view.node("b")]

        await eventually(gone, 4.0, "b gone")
        assert time.monotonic() - died < 2 + 1.0
        await members[0].stop()
        await watcher.stop()


async def test_a_gateway_keeps_its_view_while_etcd_is_down_and_catches_up(etcd, eventually) -> None:
    prefix = "m2/"
    states: list[bool] = []
    async with EtcdStore(etcd.urls, timeout=1.0) as gw_store, EtcdStore(etcd.urls) as nodes_store:
        view = ClusterView()
        watcher = ClusterWatcher(gw_store, view, layout=Layout(prefix), probe_interval=0.2,
                                 store_up=states.append)
        await watcher.start()
        first = member(nodes_store, prefix, "a")
        await first.start()

        async def seen(node_id: str) -> bool:
            return node_id in view.index and bool(view.routable[view.node(node_id)])

        await eventually(lambda: seen("a"), 2.0, "a routable")
        etcd.stop_member(0)

        async def unreachable() -> bool:
            return not watcher.reachable

        await eventually(unreachable, 5.0, "the store found unreachable")
        assert await seen("a")  # routing goes on from the last view
        etcd.restart(0)

        async def reachable() -> bool:
            return watcher.reachable

        await eventually(reachable, 5.0, "the store found again")
        second = member(nodes_store, prefix, "b")
        await second.start()
        await eventually(lambda: seen("b"), 3.0, "b routable after the restart")
        assert False in states and states[-1] is True
        for m in (first, second):
            await m.stop()
        await watcher.stop()
