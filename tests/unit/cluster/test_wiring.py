"""A gateway's cluster mode: which nodes its health checks still poll."""

from __future__ import annotations

from ollamamax import config
from ollamamax.cli.options import etcd_overrides
from ollamamax.cluster.records import NodeRecord, encode
from ollamamax.cluster.store import EventType, WatchEvent
from ollamamax.cluster.wiring import ClusterMode
from ollamamax.metrics import GatewayMetrics
from ollamamax.scheduler.view import ClusterView


async def test_embedded_mode_polls_every_node():
    view = ClusterView()
    view.add("a", "http://a:1")
    mode = ClusterMode(config.load(env={}), view, GatewayMetrics())
    assert mode.watcher is None and mode.discovery is None
    assert mode.polled() == [0]


async def test_cluster_mode_polls_only_what_etcd_does_not_describe_or_found_down():
    view = ClusterView()
    view.add("static", "http://s:1")  # gateway.backends
    mode = ClusterMode(config.load(env={}, overrides=etcd_overrides("http://127.0.0.1:9")),
                       view, GatewayMetrics())
    assert mode.watcher is not None
    for i, node_id in enumerate(("m1", "m2")):
        record = NodeRecord(id=node_id, url=f"http://m:{i}")
        mode.watcher.table.apply(WatchEvent(EventType.PUT, f"ollamamax/nodes/{node_id}",
                                            encode(record), 10 + i), now=0.0)
    m1, m2 = view.node("m1"), view.node("m2")
    assert mode.polled() == [view.node("static")]
    view.set_health(m2, False, 1.0, "connection refused")  # found down by traffic
    assert mode.polled() == [view.node("static"), m2]
    assert view.routable[m1]
    await mode.watcher.store.close()
