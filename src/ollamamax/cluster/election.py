"""Leader election for the jobs that must run once in the cluster, on any `Store`.

It is etcd's own election recipe, built from the store's operations so the embedded store
runs the same code: each candidate creates the key ``election/<name>/<lease id>`` under its
lease, and the leader is the candidate whose key has the lowest create revision. A candidate
waits until every key created before its own is gone (resigned, or its lease expired), so the
line moves in order and two candidates can never both see themselves first.

`is_leader` is true only while the candidate's `LeaseKeeper` can vouch for the lease: its
local deadline passes before the store could expire the key and let the next candidate in.
A holder that dies is replaced within the TTL (plus the store's reaping delay, 0.5 s on
etcd). When a leader loses its lease, `on_lost` is called; it may campaign again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from ollamamax.cluster.lease import LeaseKeeper
from ollamamax.cluster.store import EventType, Store
from ollamamax.errors import Compacted, LeaseNotFound, StoreError

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

SETTLE_S = 0.1  # our lease is going but the keeper has not said so yet: look again after


class Election:
    def __init__(self, store: Store, name: str, candidate_id: str, ttl_s: int = 10, *,
                 on_lost: Callable[[], object] | None = None, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        if not name or "/" in name:
            raise ValueError(f"an election name must be non-empty without '/': {name!r}")
        self.store, self.name, self.candidate_id, self.ttl_s = store, name, candidate_id, ttl_s
        self.on_lost = on_lost
        self.prefix = f"election/{name}/"
        self._clock, self._sleep = clock, sleep
        self._keeper: LeaseKeeper | None = None
        self._lease = 0  # the lease our leading key is under
        self._leading = False

    @property
    def is_leader(self) -> bool:
        keeper = self._keeper
        return (self._leading and keeper is not None and keeper.lease == self._lease
                and keeper.alive)

    async def leader(self) -> str | None:
        """The candidate id of the leader now, as the store sees it; None if nobody leads."""
        kvs, _ = await self.store.get_prefix(self.prefix)
        return min(kvs, key=lambda kv: kv.create_revision).value.decode() if kvs else None

    async def campaign(self) -> None:
        """Return once this candidate leads. Cancelling it withdraws the candidacy."""
        if self.is_leader:
            return
        if self._keeper is None:
            keeper = LeaseKeeper(self.store, self.ttl_s, on_lost=self._lease_lost,
                                 clock=self._clock, sleep=self._sleep)
            await keeper.start()  # StoreError if the store does not answer: nothing to undo
            self._keeper = keeper
        while True:
            lease = await self._keeper.wait_lease()
            key = f"{self.prefix}{lease:x}"
            try:
                await self.store.compare_and_swap(key, 0, self.candidate_id.encode(), lease)
                first = await self._wait_turn(key, lease)
            except LeaseNotFound:
                first = False  # gone before the keeper noticed; it will grant a new one
            except BaseException:
                with contextlib.suppress(StoreError):
                    await self.store.delete(key)
                raise
            if first and self._keeper.lease == lease and self._keeper.alive:
                self._lease, self._leading = lease, True
                log.info("%s leads %s", self.candidate_id, self.name)
                return
            await self._sleep(SETTLE_S)  # the lease is going: let the keeper report it

    async def resign(self) -> None:
        """Stop leading (or waiting to): the next candidate takes over at once."""
        self._leading = False
        if self._keeper is not None:
            keeper, self._keeper = self._keeper, None
            await keeper.stop(revoke=True)  # takes our key with the lease

    async def _wait_turn(self, key: str, lease: int) -> bool:
        """True once `key` is the oldest candidacy; False if it vanished (lease lost)."""
        while True:
            kvs, revision = await self.store.get_prefix(self.prefix)
            mine = next((kv for kv in kvs if kv.key == key), None)
            if mine is None or mine.lease != lease:
                return False
            if all(kv.create_revision >= mine.create_revision for kv in kvs):
                return True
            await self._wait_for_delete(revision + 1)

    async def _wait_for_delete(self, start_revision: int) -> None:
        """Until a candidacy ends (a key of the prefix is deleted); then look again."""
        with contextlib.suppress(Compacted):  # history gone: looking again is enough
            async with contextlib.aclosing(
                    self.store.watch_prefix(self.prefix, start_revision)) as events:
                async for event in events:
                    if event.type is EventType.DELETE:
                        return

    def _lease_lost(self, lease: int) -> None:
        if self._leading and lease == self._lease:
            self._leading = False
            log.warning("%s lost the lead of %s with lease %x", self.candidate_id, self.name,
                        lease)
            if self.on_lost is not None:
                self.on_lost()
