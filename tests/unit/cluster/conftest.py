"""Virtual time for the cluster unit tests: leases expire and keepers tick only when a test
says time has passed, so TTLs of seconds take no time and every interleaving is repeatable."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Callable

import pytest

from ollamamax.cluster.embedded import EmbeddedStore
from ollamamax.cluster.store import KeyValue, Store, WatchEvent


class FakeClock:
    """`sleep` waits until `advance` moves the clock past its due time; sleepers wake in due
    order, and the loop runs until it is idle after each wake-up."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        waiter = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), waiter))
        await waiter

    async def advance(self, seconds: float, step: float | None = None) -> None:
        """Move time on by `seconds` (in steps of at most `step`), waking sleepers on the way."""
        target = self.now + seconds
        await settle()
        while True:
            due = min(self._sleepers[0][0] if self._sleepers else target, target)
            if step is not None:
                due = min(due, self.now + step)
            self.now = max(self.now, due)
            while self._sleepers and self._sleepers[0][0] <= self.now:
                _, _, waiter = heapq.heappop(self._sleepers)
                if not waiter.done():
                    waiter.set_result(None)
            await settle()
            if self.now >= target:
                return


async def settle(turns: int = 50) -> None:
    """Let every ready task run until nothing is left to do (the embedded store never waits
    on I/O, so a few dozen turns of the loop are enough)."""
    for _ in range(turns):
        await asyncio.sleep(0)


@pytest.fixture
def fake() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(fake: FakeClock):
    """An embedded store on virtual time (this name shadows the model store fixture)."""
    s = EmbeddedStore(clock=fake.clock, sleep=fake.sleep)
    yield s
    await s.close()


class Link(Store):
    """One process's connection to a shared store: `cut` makes its calls hang, as behind a
    network partition, until `heal`."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self._open = asyncio.Event()
        self._open.set()

    def cut(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    async def _grant(self, ttl_s: int) -> int:
        await self._open.wait()
        return await self.inner.grant(ttl_s)

    async def _keep_alive(self, lease: int) -> int:
        await self._open.wait()
        return await self.inner.keep_alive(lease)

    async def _revoke(self, lease: int) -> None:
        await self._open.wait()
        await self.inner.revoke(lease)

    async def _put(self, key: str, value: bytes, lease: int) -> int:
        await self._open.wait()
        return await self.inner.put(key, value, lease)

    async def _get(self, key: str) -> KeyValue | None:
        await self._open.wait()
        return await self.inner.get(key)

    async def _get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        await self._open.wait()
        return await self.inner.get_prefix(prefix)

    async def _delete(self, key: str) -> bool:
        await self._open.wait()
        return await self.inner.delete(key)

    async def _delete_prefix(self, prefix: str) -> int:
        await self._open.wait()
        return await self.inner.delete_prefix(prefix)

    async def _compare_and_swap(self, key: str, expected: int, value: bytes, lease: int) -> bool:
        await self._open.wait()
        return await self.inner.compare_and_swap(key, expected, value, lease)

    async def _compact(self, revision: int) -> None:
        await self._open.wait()
        await self.inner.compact(revision)

    async def _watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        async with contextlib.aclosing(self.inner.watch_prefix(prefix, start_revision)) as events:
            async for event in events:
                await self._open.wait()
                yield event

    async def close(self) -> None:
        pass


@pytest.fixture
def link(store: EmbeddedStore) -> Callable[[], Link]:
    """Connections to the shared `store` that a test can cut."""
    return lambda: Link(store)
