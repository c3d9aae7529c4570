"""Stores for the cluster integration tests: the embedded one and a real etcd (one member
per test module, started on free ports and stopped after the module)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from ollamamax.cluster import open_store
from ollamamax.cluster.store import Store, WatchEvent
from ollamamax.testing.etcd import LocalEtcd, missing_reason


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    with LocalEtcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture(params=["embedded", "etcd"])
async def kv(request):
    """Each store, emptied: the contract suite runs once per implementation."""
    if request.param == "etcd":
        store = open_store("etcd", endpoints=request.getfixturevalue("etcd").urls)
    else:
        store = open_store("embedded")
    await store.delete_prefix("")
    yield store
    await store.close()


Check = Callable[[], Awaitable[Any]]


async def _eventually(check: Check, timeout: float = 5.0, what: str = "condition") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s (last: {result!r})")
        await asyncio.sleep(0.05)


@pytest.fixture
def eventually() -> Callable[..., Awaitable[Any]]:
    """``await eventually(check, timeout)``: poll an async check until it returns something
    true, failing after `timeout` seconds."""
    return _eventually


class Recorder:
    """A watch running in a task, keeping every event it delivers."""

    def __init__(self, store: Store, prefix: str, start_revision: int) -> None:
        self.events: list[WatchEvent] = []
        self.task = asyncio.create_task(self._run(store.watch_prefix(prefix, start_revision)))

    async def _run(self, events: AsyncIterator[WatchEvent]) -> None:
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                self.events.append(event)

    async def wait(self, count: int, timeout: float = 5.0) -> list[WatchEvent]:
        """The first `count` events, once they arrived; the watch's error if it failed."""
        async def arrived() -> bool:
            if self.task.done():
                self.task.result()  # raises what ended the watch
            return len(self.events) >= count

        await _eventually(arrived, timeout, f"{count} watch events (have {len(self.events)})")
        return self.events[:count]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def watch():
    """``watch(store, prefix, start_revision)`` starts a `Recorder`, stopped after the test."""
    recorders: list[Recorder] = []

    def start(store: Store, prefix: str, start_revision: int = 0) -> Recorder:
        recorders.append(Recorder(store, prefix, start_revision))
        return recorders[-1]

    yield start
    for recorder in recorders:
        await recorder.stop()
