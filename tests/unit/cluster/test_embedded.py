"""The embedded store on virtual time: what the contract suite cannot see with a real clock
(revision bookkeeping, exact expiry instants, the history bound)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from ollamamax.cluster import STORES, open_store
from ollamamax.cluster.embedded import EmbeddedStore
from ollamamax.cluster.store import EventType, WatchEvent
from ollamamax.errors import Compacted, ConfigError, LeaseNotFound


async def collect(store: EmbeddedStore, prefix: str, start: int, into: list[WatchEvent]) -> None:
    async with contextlib.aclosing(store.watch_prefix(prefix, start)) as events:
        async for event in events:
            into.append(event)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_stores_are_chosen_by_name() -> None:
    assert isinstance(open_store("embedded"), EmbeddedStore)
    with pytest.raises(ConfigError, match="valid stores: embedded, etcd"):
        open_store("zookeeper")
    assert set(STORES) == {"embedded", "etcd"}


async def test_one_revision_per_change_and_none_for_no_change(store) -> None:
    assert await store.put("a", b"1") == 2  # a new store is at revision 1, like etcd
    assert await store.put("b", b"1") == 3
    assert not await store.compare_and_swap("a", 99, b"x")
    assert not await store.delete("missing")
    assert await store.delete_prefix("missing/") == 0
    assert (await store.get_prefix(""))[1] == 3
    await store.put("p/1", b""), await store.put("p/2", b"")
    assert await store.delete_prefix("p/") == 2
    assert (await store.get_prefix(""))[1] == 6  # two deletions, one revision


async def test_versions_and_create_revision(store) -> None:
    first = await store.put("k", b"1")
    second = await store.put("k", b"2")
    kv = await store.get("k")
    assert (kv.create_revision, kv.mod_revision, kv.version, kv.value) == (first, second, 2, b"2")
    await store.delete("k")
    again = await store.put("k", b"3")
    kv = await store.get("k")
    assert (kv.create_revision, kv.version) == (again, 1)


async def test_lease_expires_at_its_deadline_on_the_clock(store, fake) -> None:
    lease = await store.grant(5)
    await store.put("node/1", b"up", lease)
    seen: list[WatchEvent] = []
    watcher = asyncio.create_task(collect(store, "node/", 0, seen))
    await fake.advance(4.9)
    assert await store.keep_alive(lease) == 5  # deadline now 9.9
    await fake.advance(4.9)
    assert await store.get("node/1") is not None
    await fake.advance(0.2)
    assert await store.get("node/1") is None
    assert [(e.type, e.key) for e in seen] == [(EventType.DELETE, "node/1")]  # reaped, not read
    with pytest.raises(LeaseNotFound):
        await store.keep_alive(lease)
    await stop(watcher)


async def test_a_new_short_lease_is_reaped_before_an_older_long_one(store, fake) -> None:
    long = await store.grant(60)
    await store.put("long", b"", long)
    short = await store.grant(1)
    await store.put("short", b"", short)
    seen: list[WatchEvent] = []
    watcher = asyncio.create_task(collect(store, "", 0, seen))
    await fake.advance(1.5)
    assert [e.key for e in seen] == ["short"]
    await stop(watcher)


async def test_revoke_deletes_the_lease_keys_in_one_revision(store) -> None:
    lease = await store.grant(10)
    await store.put("a", b"", lease)
    await store.put("b", b"", lease)
    await store.put("b", b"no lease now")  # re-put without the lease: detached from it
    _, before = await store.get_prefix("")
    await store.revoke(lease)
    kvs, after = await store.get_prefix("")
    assert [kv.key for kv in kvs] == ["b"]
    assert after == before + 1
    with pytest.raises(LeaseNotFound):
        await store.revoke(lease)
    with pytest.raises(LeaseNotFound):
        await store.put("c", b"", lease)


async def test_history_bound_turns_into_compacted(fake) -> None:
    store = EmbeddedStore(history=3, clock=fake.clock, sleep=fake.sleep)
    revisions = [await store.put(f"k{i}", b"") for i in range(5)]
    with pytest.raises(Compacted) as info:
        await anext(store.watch_prefix("", revisions[0]))
    assert info.value.compact_revision == revisions[2]  # the oldest revision still kept
    events = store.watch_prefix("", revisions[2])
    assert (await anext(events)).mod_revision == revisions[2]
    await events.aclose()
    await store.close()


async def test_a_watcher_that_falls_behind_gets_compacted(fake) -> None:
    store = EmbeddedStore(history=2, clock=fake.clock, sleep=fake.sleep)
    events = store.watch_prefix("", 0)
    first = asyncio.ensure_future(anext(events))
    await fake.advance(0)
    await store.put("a", b"")
    assert (await first).key == "a"
    for key in "bcd":  # while the watcher is not reading
        await store.put(key, b"")
    with pytest.raises(Compacted):
        await anext(events)
    await store.close()


async def test_compact_refuses_the_future(store) -> None:
    revision = await store.put("a", b"")
    with pytest.raises(ValueError, match="after the current revision"):
        await store.compact(revision + 1)
    await store.compact(revision)
    await store.compact(revision - 1)  # already compacted further: nothing to do


@pytest.mark.parametrize(("call", "error"), [
    (lambda s: s.put("", b""), ValueError),
    (lambda s: s.put("k", "text"), TypeError),
    (lambda s: s.grant(0), ValueError),
    (lambda s: s.keep_alive(0), ValueError),
    (lambda s: s.compare_and_swap("k", -1, b""), ValueError),
])
async def test_arguments_are_checked(store, call, error) -> None:
    with pytest.raises(error):
        await call(store)
