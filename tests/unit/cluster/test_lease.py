"""LeaseKeeper on virtual time: refreshes, the two ways to lose a lease, and the new grant."""

from __future__ import annotations

import logging

from ollamamax.cluster.lease import LeaseKeeper


async def test_keeps_the_lease_for_many_ttls_then_revokes_it(store, fake) -> None:
    keeper = LeaseKeeper(store, 3, clock=fake.clock, sleep=fake.sleep)
    lease = await keeper.start()
    await store.put("node/1", b"up", lease)
    await fake.advance(30)
    assert keeper.alive and keeper.lease == lease
    assert await store.get("node/1") is not None
    await keeper.stop()
    assert await store.get("node/1") is None  # revoked at once, not left to expire
    assert not keeper.alive


async def test_stop_without_revoke_leaves_the_keys_to_expire(store, fake) -> None:
    keeper = LeaseKeeper(store, 3, clock=fake.clock, sleep=fake.sleep)
    await store.put("k", b"", await keeper.start())
    await keeper.stop(revoke=False)
    assert await store.get("k") is not None
    await fake.advance(3.1)
    assert await store.get("k") is None


async def test_a_lease_the_store_dropped_is_reported_and_replaced(store, fake) -> None:
    lost: list[int] = []
    keeper = LeaseKeeper(store, 3, on_lost=lost.append, clock=fake.clock, sleep=fake.sleep)
    first = await keeper.start()
    await store.revoke(first)  # behind the keeper's back
    await fake.advance(1.0)  # its next refresh, at TTL/3
    assert lost == [first]
    second = await keeper.wait_lease()
    assert second not in (0, first) and keeper.alive
    await keeper.stop()


async def test_an_unreachable_store_loses_the_lease_at_the_local_deadline(link, fake) -> None:
    conn = link()
    lost: list[int] = []
    keeper = LeaseKeeper(conn, 3, on_lost=lost.append, clock=fake.clock, sleep=fake.sleep)
    first = await keeper.start()  # deadline: t=3
    await fake.advance(0.5)
    conn.cut()  # every refresh from now on hangs
    await fake.advance(2.49)
    assert keeper.alive and lost == []
    await fake.advance(0.01)
    assert not keeper.alive and lost == [first]  # at the deadline, though the call still hangs
    conn.heal()
    await fake.advance(0.5)
    assert keeper.alive and keeper.lease not in (0, first)
    await keeper.stop()


async def test_a_failing_callback_is_logged_and_the_keeper_goes_on(store, fake, caplog) -> None:
    def on_lost(lease: int) -> None:
        raise RuntimeError("boom")

    keeper = LeaseKeeper(store, 3, on_lost=on_lost, clock=fake.clock, sleep=fake.sleep)
    await store.revoke(await keeper.start())
    with caplog.at_level(logging.ERROR):
        await fake.advance(1.0)
    assert "unexpected error in the on_lost callback" in caplog.text
    assert keeper.alive
    await keeper.stop()
