"""Election on the embedded store in virtual time: order, hand-over, and never two leaders,
even when the leader is cut off and only its clock tells it to step down."""

from __future__ import annotations

import asyncio

from ollamamax.cluster.election import Election


def candidate(store, fake, name: str, ttl_s: int = 3, **kwargs) -> Election:
    return Election(store, "planner", name, ttl_s, clock=fake.clock, sleep=fake.sleep, **kwargs)


async def test_first_candidate_leads_and_the_next_waits_its_turn(store, fake) -> None:
    a, b = candidate(store, fake, "a"), candidate(store, fake, "b")
    assert await a.leader() is None
    await a.campaign()
    waiting = asyncio.create_task(b.campaign())
    await fake.advance(10)
    assert a.is_leader and not b.is_leader and not waiting.done()
    assert await b.leader() == "a"
    await a.resign()
    await fake.advance(0)
    assert waiting.done() and b.is_leader and not a.is_leader
    assert await a.leader() == "b"
    await b.resign()
    assert await a.leader() is None


async def test_a_cut_off_leader_steps_down_before_the_next_one_leads(link, fake) -> None:
    conn_a, conn_b = link(), link()
    a, b = candidate(conn_a, fake, "a"), candidate(conn_b, fake, "b")
    await a.campaign()
    waiting = asyncio.create_task(b.campaign())
    await fake.advance(1.2)
    conn_a.cut()
    history = []
    for _ in range(100):  # 5 s in steps of 50 ms
        await fake.advance(0.05)
        assert not (a.is_leader and b.is_leader), f"two leaders at t={fake.now:.2f}"
        history.append((a.is_leader, b.is_leader))
    assert waiting.done() and b.is_leader
    assert history[0] == (True, False) and history[-1] == (False, True)
    took = 0.05 * (history.index((False, True)) + 1)
    assert took <= 3  # a's last refresh got through at t=1: its lease ends by t=4


async def test_on_lost_is_called_when_the_leader_loses_its_lease(store, fake) -> None:
    lost = []
    a = candidate(store, fake, "a", on_lost=lambda: lost.append(fake.now))
    await a.campaign()
    (kv,) = (await store.get_prefix("election/planner/"))[0]
    await store.revoke(kv.lease)
    await fake.advance(1.0)
    assert lost and not a.is_leader
    await a.campaign()  # again, with the keeper's new lease
    assert a.is_leader
    await a.resign()


async def test_a_cancelled_campaign_withdraws_the_candidacy(store, fake) -> None:
    a, b = candidate(store, fake, "a"), candidate(store, fake, "b")
    await a.campaign()
    waiting = asyncio.create_task(b.campaign())
    await fake.advance(0)
    assert len((await store.get_prefix("election/planner/"))[0]) == 2
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert [kv.value for kv in (await store.get_prefix("election/planner/"))[0]] == [b"a"]
    await b.resign()
    await a.resign()


async def test_candidates_lead_in_the_order_they_came(store, fake) -> None:
    names = ["a", "b", "c", "d"]
    candidates = [candidate(store, fake, n) for n in names]
    tasks = [asyncio.create_task(c.campaign()) for c in candidates]
    order = []
    for _ in names:
        await fake.advance(0.1)
        (leader,) = [c for c in candidates if c.is_leader]
        order.append(leader.candidate_id)
        await leader.resign()
    assert order == names
    await asyncio.gather(*tasks)
