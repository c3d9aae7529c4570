"""The in-process store: what a lone gateway uses, with nothing else to start.

It keeps etcd's semantics wherever a caller can see them, so the code above it (and the
contract tests) cannot tell the two apart: one revision per change, none for a failed
compare-and-swap or a delete of nothing; leases in whole seconds that expire on a monotonic
clock and take their keys with them in one revision; watches that replay a bounded history of
events, so a watcher that starts before a `compact`, or falls more than `history` events
behind, gets `Compacted` as it would from etcd.

Every method runs without awaiting in between, so each one is atomic on the event loop.
Expired leases are reaped by a task that sleeps until the next deadline, and also before
every call, so an expired key is never read even when the loop was too busy to reap.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from ollamamax.cluster.store import EventType, KeyValue, Store, WatchEvent
from ollamamax.errors import Compacted, LeaseNotFound, StoreError

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class _Lease:
    ttl: int
    deadline: float
    keys: set[str] = field(default_factory=set)


class EmbeddedStore(Store):
    def __init__(self, *, history: int = 10_000, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        if history < 1:
            raise ValueError("history must keep at least one event")
        self._clock, self._sleep, self._history = clock, sleep, history
        self._revision = 1  # as in a new etcd: the first change is revision 2
        self._compact_revision = 0  # watches must start at or after it
        self._data: dict[str, KeyValue] = {}
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(1)
        self._events: deque[WatchEvent] = deque()
        self._changed = asyncio.Event()  # replaced after each change; watchers wait on it
        self._reaper: asyncio.Task[None] | None = None
        self._reaper_due = math.inf
        self._closed = False

    # -- leases ----------------------------------------------------------------------------

    async def _grant(self, ttl_s: int) -> int:
        self._check()
        lease_id = next(self._lease_ids)
        lease = self._leases[lease_id] = _Lease(ttl_s, self._clock() + ttl_s)
        self._wake_reaper(lease.deadline)
        return lease_id

    async def _keep_alive(self, lease: int) -> int:
        held = self._held(lease)
        held.deadline = self._clock() + held.ttl
        return held.ttl

    async def _revoke(self, lease: int) -> None:
        self._held(lease)
        self._end_lease(lease)

    def _held(self, lease: int) -> _Lease:
        self._check()
        held = self._leases.get(lease)
        if held is None:
            raise LeaseNotFound(lease)
        return held

    def _end_lease(self, lease: int) -> None:
        keys = self._leases.pop(lease).keys
        if keys:
            revision = self._revision + 1
            for key in sorted(keys):
                self._remove(key, revision)
            self._commit(revision)

    def _expire(self) -> None:
        now = self._clock()
        for lease in [i for i, held in self._leases.items() if held.deadline <= now]:
            self._end_lease(lease)

    def _wake_reaper(self, deadline: float) -> None:
        """Make sure the reaper wakes by `deadline` (a new lease may end before the others)."""
        if self._reaper is not None and not self._reaper.done():
            if deadline >= self._reaper_due:
                return
            self._reaper.cancel()
        self._reaper_due = deadline
        self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="lease-reaper")

    async def _reap(self) -> None:
        while self._leases:
            self._reaper_due = min(held.deadline for held in self._leases.values())
            await self._sleep(max(0.0, self._reaper_due - self._clock()))
            self._expire()
        self._reaper_due = math.inf

    # -- keys ------------------------------------------------------------------------------

    async def _put(self, key: str, value: bytes, lease: int) -> int:
        self._check()
        return self._write(key, value, lease)

    async def _get(self, key: str) -> KeyValue | None:
        self._check()
        return self._data.get(key)

    async def _get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        self._check()
        return [self._data[k] for k in sorted(self._matching(prefix))], self._revision

    async def _delete(self, key: str) -> bool:
        self._check()
        return self._delete_keys([key] if key in self._data else []) == 1

    async def _delete_prefix(self, prefix: str) -> int:
        self._check()
        return self._delete_keys(sorted(self._matching(prefix)))

    async def _compare_and_swap(self, key: str, expected: int, value: bytes, lease: int) -> bool:
        self._check()
        current = self._data.get(key)
        if (current.mod_revision if current else 0) != expected:
            return False
        self._write(key, value, lease)
        return True

    def _matching(self, prefix: str) -> list[str]:
        return [k for k in self._data if k.startswith(prefix)]

    def _write(self, key: str, value: bytes, lease: int) -> int:
        if lease and lease not in self._leases:
            raise LeaseNotFound(lease)
        revision = self._revision + 1
        old = self._data.get(key)
        if old is not None and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        self._data[key] = KeyValue(key, value, old.create_revision if old else revision,
                                   revision, old.version + 1 if old else 1, lease)
        if lease:
            self._leases[lease].keys.add(key)
        self._events.append(WatchEvent(EventType.PUT, key, value, revision))
        self._commit(revision)
        return revision

    def _delete_keys(self, keys: list[str]) -> int:
        if keys:
            revision = self._revision + 1
            for key in keys:
                self._remove(key, revision)
            self._commit(revision)
        return len(keys)

    def _remove(self, key: str, revision: int) -> None:
        old = self._data.pop(key)
        if old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        self._events.append(WatchEvent(EventType.DELETE, key, b"", revision))

    def _commit(self, revision: int) -> None:
        self._revision = revision
        while len(self._events) > self._history:  # forget whole revisions, oldest first
            self._forget_before(self._events[0].mod_revision + 1)
        self._changed.set()
        self._changed = asyncio.Event()

    # -- history ---------------------------------------------------------------------------

    async def _compact(self, revision: int) -> None:
        self._check()
        if revision > self._revision:
            raise ValueError(f"cannot compact at {revision}, after the current revision "
                             f"{self._revision}")
        self._forget_before(revision)

    def _forget_before(self, revision: int) -> None:
        while self._events and self._events[0].mod_revision < revision:
            self._events.popleft()
        self._compact_revision = max(self._compact_revision, revision)

    async def _watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        self._check()
        wanted = start_revision or self._revision + 1
        while not self._closed:
            self._expire()
            if wanted < self._compact_revision:
                raise Compacted(self._compact_revision)
            changed = self._changed  # taken before reading, so no change is slept through
            first = bisect.bisect_left(self._events, wanted, key=lambda e: e.mod_revision)
            batch = list(itertools.islice(self._events, first, None))
            wanted = self._revision + 1
            for event in batch:
                if event.key.startswith(prefix):
                    yield event
            await changed.wait()

    # -- lifecycle -------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")
        self._expire()

    async def close(self) -> None:
        self._closed = True
        self._changed.set()
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
