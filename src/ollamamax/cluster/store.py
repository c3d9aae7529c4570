"""The coordination store: a small etcd-shaped key-value API that both stores implement.

Keys are UTF-8 strings, values bytes. Every change gets the next *revision* of the whole
store, and the revision orders everything: a watch started from revision R sees every change
from R on, in order, once; a compare-and-swap succeeds only if the key was last modified at
the revision the caller saw. Keys may live under a *lease*: when the lease expires (its
holder stopped calling `keep_alive`) or is revoked, its keys are deleted in one revision.

Watches are async generators; close them when done (``contextlib.aclosing``). They resume by
themselves after a dropped connection; `Compacted` is the one error that asks the caller to
list again (`get_prefix`) and watch from the revision that listing returned, plus one.

The public methods here check their arguments once for every implementation; the
implementations do the work in the ``_``-prefixed methods.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator
from typing import Self

import msgspec


class KeyValue(msgspec.Struct, frozen=True):
    key: str
    value: bytes
    create_revision: int  # revision of the put that created the key (ordering of elections)
    mod_revision: int  # revision of the last change (what compare_and_swap compares)
    version: int  # puts since creation
    lease: int = 0


class EventType(enum.StrEnum):
    PUT = "put"
    DELETE = "delete"


class WatchEvent(msgspec.Struct, frozen=True):
    type: EventType
    key: str
    value: bytes  # b"" for a delete
    mod_revision: int


class Store(abc.ABC):
    """What cluster mode needs from a coordination store; see the module docstring."""

    async def grant(self, ttl_s: int) -> int:
        """A new lease of `ttl_s` whole seconds (etcd's unit); returns its id."""
        if ttl_s < 1:
            raise ValueError(f"lease TTL must be at least 1 s, not {ttl_s}")
        return await self._grant(int(ttl_s))

    async def keep_alive(self, lease: int) -> int:
        """Restart the lease's TTL; returns it. `LeaseNotFound` if it already expired."""
        return await self._keep_alive(_lease(lease))

    async def revoke(self, lease: int) -> None:
        """End the lease now, deleting its keys. `LeaseNotFound` if it is already gone."""
        await self._revoke(_lease(lease))

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Set `key`; returns the revision of the change."""
        return await self._put(_key(key), _value(value), lease)

    async def get(self, key: str) -> KeyValue | None:
        return await self._get(_key(key))

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """The keys under `prefix` in key order, and the revision they were read at."""
        return await self._get_prefix(prefix)

    async def delete(self, key: str) -> bool:
        """Delete `key`; False if it did not exist."""
        return await self._delete(_key(key))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix` ("" = all) in one revision; returns how many."""
        return await self._delete_prefix(prefix)

    async def compare_and_swap(self, key: str, expected_mod_revision: int, value: bytes,
                               lease: int = 0) -> bool:
        """Set `key` only if its mod_revision is `expected_mod_revision` (0: it must not
        exist), atomically; False, with nothing changed, otherwise."""
        if expected_mod_revision < 0:
            raise ValueError("expected_mod_revision must be >= 0")
        return await self._compare_and_swap(_key(key), expected_mod_revision, _value(value),
                                            lease)

    def watch_prefix(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        """Changes under `prefix` from `start_revision` on (0: from now), in revision order,
        each once, across reconnections. `Compacted` if that history is gone."""
        if start_revision < 0:
            raise ValueError("start_revision must be >= 0")
        return self._watch_prefix(prefix, start_revision)

    async def compact(self, revision: int) -> None:
        """Forget the history before `revision`; watches from earlier get `Compacted`."""
        await self._compact(revision)

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and tasks; open watches end."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def _grant(self, ttl_s: int) -> int: ...
    @abc.abstractmethod
    async def _keep_alive(self, lease: int) -> int: ...
    @abc.abstractmethod
    async def _revoke(self, lease: int) -> None: ...
    @abc.abstractmethod
    async def _put(self, key: str, value: bytes, lease: int) -> int: ...
    @abc.abstractmethod
    async def _get(self, key: str) -> KeyValue | None: ...
    @abc.abstractmethod
    async def _get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]: ...
    @abc.abstractmethod
    async def _delete(self, key: str) -> bool: ...
    @abc.abstractmethod
    async def _delete_prefix(self, prefix: str) -> int: ...
    @abc.abstractmethod
    async def _compare_and_swap(self, key: str, expected: int, value: bytes, lease: int) -> bool: ...
    @abc.abstractmethod
    def _watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]: ...
    @abc.abstractmethod
    async def _compact(self, revision: int) -> None: ...


def _key(key: str) -> str:
    if not key:
        raise ValueError("a key must not be empty")  # etcd refuses it too
    return key


def _value(value: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"a value must be bytes, not {type(value).__name__}")
    return bytes(value)


def _lease(lease: int) -> int:
    if lease <= 0:
        raise ValueError(f"not a lease id: {lease}")
    return lease
