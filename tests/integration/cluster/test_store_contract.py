"""One behaviour, every store: the same tests run on the embedded store and on a real etcd.

Revisions are compared with each other, never with absolute numbers (the etcd member is
shared by the module and keeps counting)."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from ollamamax.cluster.election import Election
from ollamamax.cluster.lease import LeaseKeeper
from ollamamax.cluster.store import EventType, KeyValue
from ollamamax.errors import Compacted, LeaseNotFound, StoreError

pytestmark = pytest.mark.slow


def keys(kvs: list[KeyValue]) -> list[str]:
    return [kv.key for kv in kvs]


async def test_put_get_and_versions(kv) -> None:
    first = await kv.put("cfg/a", b"1")
    got = await kv.get("cfg/a")
    assert got == KeyValue("cfg/a", b"1", first, first, 1, 0)
    second = await kv.put("cfg/a", b"2")
    assert second > first
    got = await kv.get("cfg/a")
    assert (got.value, got.create_revision, got.mod_revision, got.version) == (b"2", first, second, 2)
    assert await kv.get("cfg/missing") is None


async def test_empty_values_and_unicode_keys_round_trip(kv) -> None:
    await kv.put("nodes/ü-1", b"")  # etcd leaves an empty value out of its answers
    got = await kv.get("nodes/ü-1")
    assert got is not None and got.value == b""
    assert keys((await kv.get_prefix("nodes/"))[0]) == ["nodes/ü-1"]


async def test_get_prefix_is_sorted_and_bounded(kv) -> None:
    for key in ["p/c", "p/a", "p/b", "p0", "p", "q/a"]:
        last = await kv.put(key, key.encode())
    kvs, revision = await kv.get_prefix("p/")
    assert keys(kvs) == ["p/a", "p/b", "p/c"]
    assert [kv.value for kv in kvs] == [b"p/a", b"p/b", b"p/c"]
    assert revision >= last
    assert keys((await kv.get_prefix(""))[0]) == ["p", "p/a", "p/b", "p/c", "p0", "q/a"]
    assert (await kv.get_prefix("none/"))[0] == []


async def test_delete_and_delete_prefix(kv) -> None:
    for key in ["d/1", "d/2", "d/3", "dx"]:
        await kv.put(key, b"")
    assert await kv.delete("d/1") is True
    assert await kv.delete("d/1") is False
    assert await kv.delete_prefix("d/") == 2
    assert await kv.delete_prefix("d/") == 0
    assert keys((await kv.get_prefix(""))[0]) == ["dx"]


async def test_compare_and_swap(kv) -> None:
    assert await kv.compare_and_swap("lock", 0, b"a") is True  # 0: must not exist
    assert await kv.compare_and_swap("lock", 0, b"b") is False
    held = await kv.get("lock")
    _, before = await kv.get_prefix("")
    assert await kv.compare_and_swap("lock", held.mod_revision + 100, b"c") is False
    assert (await kv.get_prefix(""))[1] == before  # a failed swap changes nothing
    assert await kv.compare_and_swap("lock", held.mod_revision, b"d") is True
    now = await kv.get("lock")
    assert (now.value, now.version) == (b"d", 2)
    assert await kv.compare_and_swap("lock", held.mod_revision, b"e") is False  # stale
    lease = await kv.grant(5)
    assert await kv.compare_and_swap("leased", 0, b"x", lease) is True
    assert (await kv.get("leased")).lease == lease
    await kv.revoke(lease)
    with pytest.raises(LeaseNotFound):
        await kv.compare_and_swap("other", 0, b"x", lease)


async def test_lease_expiry_removes_its_keys(kv, eventually) -> None:
    lease = await kv.grant(1)
    assert await kv.keep_alive(lease) >= 1
    await kv.put("nodes/n1", b"up", lease)
    await kv.put("nodes/n2", b"up")
    assert (await kv.get("nodes/n1")).lease == lease

    async def gone() -> bool:
        return await kv.get("nodes/n1") is None

    await eventually(gone, timeout=1 + 2, what="the leased key expiring")
    assert await kv.get("nodes/n2") is not None
    with pytest.raises(LeaseNotFound):
        await kv.keep_alive(lease)
    with pytest.raises(LeaseNotFound):
        await kv.put("nodes/n3", b"", lease)


async def test_a_kept_lease_keeps_its_keys_and_revoke_ends_them(kv) -> None:
    keeper = LeaseKeeper(kv, 2)
    lease = await keeper.start()
    await kv.put("nodes/kept", b"up", lease)
    await asyncio.sleep(3.0)  # unrefreshed, the lease would have ended by 2.5 s
    assert keeper.alive and keeper.lease == lease
    assert await kv.get("nodes/kept") is not None
    await keeper.stop()
    assert await kv.get("nodes/kept") is None
    with pytest.raises(LeaseNotFound):
        await kv.revoke(lease)


async def test_watch_sees_puts_and_deletes_in_order(kv, watch) -> None:
    _, revision = await kv.get_prefix("w/")
    recorder = watch(kv, "w/", revision + 1)
    lease = await kv.grant(1)
    await kv.put("w/a", b"1")
    await kv.put("other", b"not watched")
    await kv.put("w/b", b"2", lease)
    await kv.put("w/a", b"3")
    await kv.delete("w/a")
    await kv.put("w/c", b"4")
    await kv.delete_prefix("w/c")
    events = await recorder.wait(7)
    assert [(e.type, e.key, e.value) for e in events] == [
        (EventType.PUT, "w/a", b"1"), (EventType.PUT, "w/b", b"2"), (EventType.PUT, "w/a", b"3"),
        (EventType.DELETE, "w/a", b""), (EventType.PUT, "w/c", b"4"),
        (EventType.DELETE, "w/c", b""),
        (EventType.DELETE, "w/b", b""),  # its lease expired
    ]
    revisions = [e.mod_revision for e in events]
    assert revisions == sorted(set(revisions))


async def test_watch_replays_from_a_past_revision(kv, watch) -> None:
    first = await kv.put("h/1", b"a")
    await kv.put("h/2", b"b")
    await kv.delete("h/1")
    events = await watch(kv, "h/", first).wait(3)
    assert [(e.type, e.key) for e in events] == [
        (EventType.PUT, "h/1"), (EventType.PUT, "h/2"), (EventType.DELETE, "h/1")]
    assert events[0].mod_revision == first


async def test_watch_from_now_skips_the_past(kv, watch, eventually) -> None:
    await kv.put("n/before", b"")
    recorder = watch(kv, "n/", 0)

    async def seen() -> bool:  # the watch starts some time after the call: write until it sees
        await kv.put("n/after", b"")
        return bool(recorder.events)

    await eventually(seen, what="the watch from now seeing a new put")
    assert {e.key for e in recorder.events} == {"n/after"}


async def test_watch_from_a_compacted_revision_asks_to_list_again(kv, watch) -> None:
    old = await kv.put("c/1", b"")
    await kv.put("c/2", b"")
    now = await kv.put("c/3", b"")
    await kv.compact(now)
    with pytest.raises(Compacted) as info:
        await watch(kv, "c/", old).wait(1)
    assert info.value.compact_revision == now
    kvs, revision = await kv.get_prefix("c/")  # what the caller does next
    assert keys(kvs) == ["c/1", "c/2", "c/3"]
    await kv.put("c/4", b"")
    assert [e.key for e in await watch(kv, "c/", revision + 1).wait(1)] == ["c/4"]


async def test_close_ends_open_watches_and_refuses_calls(kv, watch) -> None:
    revision = await kv.put("e/1", b"")
    recorder = watch(kv, "e/", revision)
    await recorder.wait(1)
    await kv.close()
    await asyncio.wait_for(recorder.task, 5)  # ended, without an error
    with pytest.raises(StoreError, match="closed"):
        await kv.get("e/1")


async def test_election_never_has_two_leaders(kv) -> None:
    """Candidates take turns for a while; each tenure, from `campaign` returning to `resign`
    being called, must not overlap another's."""
    tenures: list[tuple[float, float, str]] = []
    loop = asyncio.get_running_loop()
    rng = random.Random(5)
    stop_at = loop.time() + 1.0

    async def candidate(name: str) -> None:
        election = Election(kv, "contract", name, ttl_s=5)
        while loop.time() < stop_at:
            await election.campaign()
            start = loop.time()
            assert election.is_leader and await election.leader() == name
            await asyncio.sleep(rng.uniform(0, 0.03))
            tenures.append((start, loop.time(), name))
            await election.resign()

    await asyncio.wait_for(asyncio.gather(*(candidate(f"c{i}") for i in range(4))), 15)
    tenures.sort()
    assert len(tenures) >= 8 and len({name for *_, name in tenures}) == 4
    for (_, end, who), (start, _, next_one) in itertools.pairwise(tenures):
        assert end <= start, f"{who} and {next_one} led at once"
