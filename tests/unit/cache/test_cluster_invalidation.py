"""Cluster mode: the gateway's view follows node telemetry through the etcd watch
(`cluster.view_sync.MemberTable`); a digest change seen there drops the old answers."""

from __future__ import annotations

from ollamamax.cache.memory import MemoryTier
from ollamamax.cache.responses import ResponseCache
from ollamamax.cache.stack import CacheStack
from ollamamax.cluster.records import Layout, NodeRecord, encode
from ollamamax.cluster.store import EventType, WatchEvent
from ollamamax.cluster.view_sync import MemberTable
from ollamamax.config import CacheConfig
from ollamamax.scheduler import ClusterView

LAYOUT = Layout()


def put(key: str, value: bytes, revision: int) -> WatchEvent:
    return WatchEvent(EventType.PUT, key, value, revision)


def telemetry(digest: str) -> bytes:
    return encode({"node_id": "node-1", "models": [{"name": "m:1b", "digest": digest}],
                   "loaded": []})


async def test_a_digest_change_in_watched_telemetry_drops_the_old_answers():
    view = ClusterView()
    table = MemberTable(view, LAYOUT)
    cache = ResponseCache(CacheConfig(), CacheStack([MemoryTier(max_bytes=1 << 20, ttl=0)]))
    table.apply(put(LAYOUT.node("node-1"), encode(NodeRecord(id="node-1", url="http://n:1",
                                                             engine="sim")), 1), now=0.0)
    table.apply(put(LAYOUT.telemetry("node-1"), telemetry("sha256:old"), 2), now=0.0)
    assert cache.models_changed(view) == []  # what the gateway's on_change callback does
    assert cache.digests.get("m:1b") == "sha256:old"
    cache.stack.record(b"key", b"answer", "sha256:old")

    table.apply(put(LAYOUT.telemetry("node-1"), telemetry("sha256:old"), 3), now=1.0)
    assert cache.models_changed(view) == []  # telemetry again, same model: nothing dropped
    assert await cache.stack.lookup(b"key") == (b"answer", "memory")

    table.apply(put(LAYOUT.telemetry("node-1"), telemetry("sha256:new"), 4), now=2.0)
    assert cache.models_changed(view) == ["sha256:old"]
    assert cache.digests.get("m:1b") == "sha256:new"
    assert await cache.stack.lookup(b"key") is None
    assert cache.stack.invalidations == 1
