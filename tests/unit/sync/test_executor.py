"""The node's executor on the embedded store with a fake fetcher: version records published
at start and after changes, assignments run (blobs fetched first, the losing version replaced
only then, nothing deleted), records keep the copied version's time across restarts."""

from __future__ import annotations

import asyncio
import os
import time

import msgspec
import pytest

from ollamamax.cluster.embedded import EmbeddedStore
from ollamamax.errors import Unavailable
from ollamamax.models.store import ModelStore
from ollamamax.sync.desired import SyncKeys
from ollamamax.sync.executor import Executor, write_manifest_text
from ollamamax.sync.planner import Assignment
from ollamamax.sync.resolve import VersionRecord, decode_record
from ollamamax.testing.tiny_gguf import import_tiny_model

PREFIX = "t/"
KEYS = SyncKeys(PREFIX)


class CopyFetcher:
    """Fetches blobs by copying them from another store; fails the first `failures` calls."""

    def __init__(self, source: ModelStore, target: ModelStore, failures: int = 0) -> None:
        self.source, self.target, self.failures = source, target, failures
        self.fetched: list[str] = []

    async def fetch(self, digest: str, size: int, on_progress: object = None) -> None:
        if self.failures:
            self.failures -= 1
            raise Unavailable(f"no holder can serve {digest}")
        assert not self.target.has_blob(digest), "fetch is only asked for missing blobs"
        with self.source.blob_path(digest).open("rb") as f:
            self.target.write_blob(f, expected=digest)
        self.fetched.append(digest)


async def until(check, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.01)


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture
async def kv():
    store = EmbeddedStore()
    yield store
    await store.close()


def executor(store: ModelStore, kv, node: str, fetcher, lease: int) -> Executor:
    return Executor(store, kv, node, fetcher, lease=lambda: lease, prefix=PREFIX,
                    scan_interval=0.05, sleep=no_sleep)


async def record_of(kv, model: str, node: str):
    item = await kv.get(KEYS.version(model, node))
    return None if item is None else decode_record(item.value)


async def test_an_assignment_brings_the_winner_and_keeps_its_version(kv, tmp_path) -> None:
    origin, target = ModelStore(tmp_path / "a"), ModelStore(tmp_path / "b")
    import_tiny_model(origin.root, "tiny:latest", seed=1)
    import_tiny_model(target.root, "tiny:latest", seed=2)  # a conflicting version
    old_blobs = set(target.local_blobs())
    lease = await kv.grant(30)
    fetcher = CopyFetcher(origin, target, failures=1)
    a, b = executor(origin, kv, "a", None, lease), executor(target, kv, "b", fetcher, lease)
    await a.start()
    await b.start()
    try:
        won = await record_of(kv, "tiny:latest", "a")
        lost = await record_of(kv, "tiny:latest", "b")
        assert won.origin == "a" and lost.origin == "b" and won.digest != lost.digest
        await kv.put(KEYS.assign("b", "tiny:latest"), msgspec.json.encode(Assignment.of(won)))
        await until(lambda: b.done, "the assignment ran")
        assert target.get("tiny:latest").digest == won.digest[7:]
        assert old_blobs <= set(target.local_blobs())  # the loser's blobs are still there
        copied = await record_of(kv, "tiny:latest", "b")
        assert copied == won  # the same digest, manifest, origin and time
        assert await kv.get(KEYS.assign("b", "tiny:latest")) is None
        assert len(fetcher.fetched) == 2  # the model blob and the config, after one failure
    finally:
        await a.stop()
        await b.stop()
    restarted = executor(target, kv, "b", fetcher, lease)
    await restarted.publish()
    assert await record_of(kv, "tiny:latest", "b") == won  # remembered across restarts


async def test_records_follow_imports_and_removals_while_running(kv, tmp_path) -> None:
    store = ModelStore(tmp_path / "a")
    lease = await kv.grant(30)
    ex = executor(store, kv, "a", None, lease)
    await ex.start()
    ahead = VersionRecord(digest="sha256:" + "0" * 64, manifest="{}", origin="z",
                          hlc=(ex.started_ms + 3_600_000, 5, "z"))  # a clock an hour ahead
    await kv.put(KEYS.version("late:1", "z"), msgspec.json.encode(ahead))
    try:
        assert await record_of(kv, "late:1", "a") is None
        import_tiny_model(store.root, "late:1", seed=3)
        await until(lambda: "late:1" in ex._published, "the import was published")
        rec = await record_of(kv, "late:1", "a")
        assert rec.time.wall_ms >= ex.started_ms  # made while running: dated by the clock
        assert rec.time > ahead.time  # made after seeing z's version: ordered after it
        for path in store.manifests.rglob("1"):
            path.unlink()
        await until(lambda: "late:1" not in ex._published, "the removal was published")
        assert await record_of(kv, "late:1", "a") is None
    finally:
        await ex.stop()


async def test_a_withdrawn_assignment_is_cancelled(kv, tmp_path) -> None:
    origin, target = ModelStore(tmp_path / "a"), ModelStore(tmp_path / "b")
    model = import_tiny_model(origin.root, "tiny:latest", seed=1)
    lease = await kv.grant(30)
    started, release = asyncio.Event(), asyncio.Event()

    class Hanging(CopyFetcher):
        async def fetch(self, digest: str, size: int, on_progress: object = None) -> None:
            started.set()
            await release.wait()

    a = executor(origin, kv, "a", None, lease)
    await a.publish()
    won = await record_of(kv, "tiny:latest", "a")
    b = executor(target, kv, "b", Hanging(origin, target), lease)
    await b.start()
    try:
        await kv.put(KEYS.assign("b", "tiny:latest"), msgspec.json.encode(Assignment.of(won)))
        await asyncio.wait_for(started.wait(), 5)
        assert b.running == ["tiny:latest"]
        await kv.delete(KEYS.assign("b", "tiny:latest"))
        await until(lambda: not b.running, "the withdrawn assignment stopped")
        assert not b.done and not target.manifests.exists()
    finally:
        await b.stop()
    assert model.digest == won.digest[7:]


def test_a_manifest_is_written_only_whole_and_matching(tmp_path) -> None:
    origin, target = ModelStore(tmp_path / "a"), ModelStore(tmp_path / "b")
    model = import_tiny_model(origin.root, "tiny:latest", seed=1)
    text = next(origin.manifests.rglob("latest")).read_text()
    with pytest.raises(Exception, match="missing blob"):
        write_manifest_text(target, "tiny:latest", text, f"sha256:{model.digest}")
    with pytest.raises(Exception, match="does not hash"):
        write_manifest_text(target, "tiny:latest", text + " ", f"sha256:{model.digest}")
    assert not target.manifests.exists()


async def test_two_nodes_with_diverging_tags_converge_on_the_newest(kv, tmp_path) -> None:
    """Planner and executors together: the older copy is replaced by the newer everywhere."""
    from ollamamax.cluster.records import Layout, NodeRecord
    from ollamamax.sync.planner import PlannerLoop

    a_store, b_store = ModelStore(tmp_path / "a"), ModelStore(tmp_path / "b")
    import_tiny_model(a_store.root, "tiny:latest", seed=1)
    older = next(a_store.manifests.rglob("latest"))
    os.utime(older, (older.stat().st_atime - 10, older.stat().st_mtime - 10))  # a's is older
    lease = await kv.grant(30)
    for n in ("a", "b"):
        await kv.put(Layout(PREFIX).node(n), msgspec.json.encode(NodeRecord(id=n, url=n)))
    a = executor(a_store, kv, "a", CopyFetcher(b_store, a_store), lease)
    await a.start()
    import_tiny_model(b_store.root, "tiny:latest", seed=2)  # b's is made later: newer
    b = executor(b_store, kv, "b", CopyFetcher(a_store, b_store), lease)
    await b.start()
    planner = PlannerLoop(kv, "a", prefix=PREFIX)
    await planner.election.campaign()
    try:
        newer = await record_of(kv, "tiny:latest", "b")
        assert (await record_of(kv, "tiny:latest", "a")).digest != newer.digest
        assert "conflict resolved" in await planner.tick()
        await until(lambda: a.done, "a fetched the winner")
        assert await record_of(kv, "tiny:latest", "a") == newer
        assert a_store.get("tiny:latest").digest == b_store.get("tiny:latest").digest
        assert await planner.tick() == "placement as desired"
    finally:
        await planner.stop()
        await a.stop()
        await b.stop()
