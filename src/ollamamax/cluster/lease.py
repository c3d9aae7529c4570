"""Keeping a lease alive from a task, for as long as this process wants its keys to live.

The keeper refreshes the lease every TTL/3 and keeps a local *deadline*: when the last
refresh that got through was sent, plus the TTL the store answered. The store counts from
when it received that refresh, later, so the local deadline passes first and `alive` turns
False before the store can let anything held under the lease go to someone else.

A lease is lost when the store says it is gone or when no refresh got through before the
deadline (the store was unreachable). Then the keeper calls ``on_lost(lease)`` once, grants
a new lease as soon as the store answers (`lease` is 0 until then; `wait_lease` waits for
it), and revokes the old one, whose keys may still exist if the store was only out of reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ollamamax.cluster.store import Store
from ollamamax.errors import LeaseNotFound, StoreError

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")

RETRY_S = 0.5  # between attempts while the store does not answer (at most TTL/3)


class LeaseKeeper:
    def __init__(self, store: Store, ttl_s: int, *, on_lost: Callable[[int], object] | None = None,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self.store, self.ttl_s, self.on_lost = store, ttl_s, on_lost
        self._clock, self._sleep = clock, sleep
        self.lease = 0  # the lease held now; 0 between a loss and the next grant
        self._deadline = 0.0
        self._failing = False  # the last call to the store failed: retry sooner
        self._lost = 0  # a lost lease still to revoke
        self._granted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        """A lease is held and cannot have expired on the store yet."""
        return self.lease != 0 and self._clock() < self._deadline

    async def start(self) -> int:
        """Grant the first lease (`StoreError` if the store does not answer) and keep it."""
        if self._task is not None:
            raise RuntimeError("this LeaseKeeper was already started")
        await self._grant()
        self._task = asyncio.create_task(self._run(), name=f"lease-keeper-{self.lease:x}")
        return self.lease

    async def wait_lease(self) -> int:
        """The lease held now, waiting for a new grant after a loss."""
        await self._granted.wait()
        return self.lease

    async def stop(self, *, revoke: bool = True) -> None:
        """Stop refreshing; with `revoke`, end the lease now so its keys go at once."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for lease in (self.lease, self._lost) if revoke else ():
            if lease:
                with contextlib.suppress(StoreError):
                    await self.store.revoke(lease)
        self.lease = self._lost = 0
        self._granted.clear()

    async def _run(self) -> None:
        while True:
            await self._sleep(self._pause())
            if self.lease:
                await self._refresh()
            if not self.lease:
                await self._regrant()

    def _pause(self) -> float:
        if not self.lease:
            return RETRY_S
        every = min(RETRY_S, self.ttl_s / 3) if self._failing else self.ttl_s / 3
        return max(0.0, min(every, self._deadline - self._clock()))  # wake by the deadline

    async def _refresh(self) -> None:
        sent = self._clock()
        try:
            ttl = await self._by_deadline(self.store.keep_alive(self.lease))
        except LeaseNotFound:
            self._lose("the store says it expired")
        except (StoreError, TimeoutError) as exc:
            self._failing = True
            if self._clock() >= self._deadline:
                self._lose("no refresh got through before its deadline "
                           f"({str(exc) or type(exc).__name__})")
        else:
            self._deadline, self._failing = sent + ttl, False

    async def _regrant(self) -> None:
        try:
            await self._grant()
        except StoreError as exc:
            self._failing = True
            log.debug("granting a new lease failed (%s); retrying", exc)
            return
        log.info("granted lease %x after losing lease %x", self.lease, self._lost)
        with contextlib.suppress(StoreError):
            await self.store.revoke(self._lost)
        self._lost = 0

    async def _grant(self) -> None:
        sent = self._clock()
        self.lease = await self.store.grant(self.ttl_s)
        self._deadline, self._failing = sent + self.ttl_s, False
        self._granted.set()

    def _lose(self, reason: str) -> None:
        lost, self.lease, self._lost = self.lease, 0, self.lease
        self._granted.clear()
        log.warning("lost lease %x: %s", lost, reason)
        if self.on_lost is not None:
            try:
                self.on_lost(lost)
            except Exception:
                log.exception("unexpected error in the on_lost callback of lease %x", lost)

    async def _by_deadline(self, call: Awaitable[T]) -> T:
        """`call`'s result, or TimeoutError once the local deadline passes (on the injected
        clock), so a store that hangs cannot hold the loss back."""
        task = await within(call, max(0.0, self._deadline - self._clock()), self._sleep)
        if task is None:
            raise TimeoutError
        return task.result()


async def within(call: Awaitable[T], seconds: float, sleep: Sleep) -> asyncio.Future[T] | None:
    """Await `call` for at most `seconds` of the injected clock: its finished future, or None
    if it did not end in time (it is then cancelled)."""
    task = asyncio.ensure_future(call)
    timer = asyncio.ensure_future(sleep(seconds))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, timer):
            pending.cancel()
        await asyncio.gather(task, timer, return_exceptions=True)
    return None if task.cancelled() else task
