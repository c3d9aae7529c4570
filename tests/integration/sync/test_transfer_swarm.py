"""Transfers on a real etcd between real holders: a holder sending corrupt chunks, a holder
killed mid-transfer, and a receiver killed -9 that resumes with only the missing chunks.
Holders and receivers are `ollamamax.sync.peer` processes where the test kills them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from ollamamax.cluster.etcd import EtcdStore
from ollamamax.config import SyncConfig
from ollamamax.models.store import ModelStore
from ollamamax.sync import blobs, chunks
from ollamamax.sync.transfer import Fetcher, TransferError
from ollamamax.testing.etcd import LocalEtcd, missing_reason

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]

TOKEN = "swarm-token"
CHUNK = 128 << 10


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    with LocalEtcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
async def kv(etcd):
    store = EtcdStore(etcd.urls)
    yield store
    await store.close()


@pytest.fixture
def prefix(request) -> str:
    return f"t-{request.node.name[:40]}/"


class Holder:
    """A blob service and its holder record in this process (its served bytes countable)."""

    def __init__(self, store: ModelStore, kv: EtcdStore, node_id: str, prefix: str) -> None:
        self.store, self.kv, self.node_id, self.prefix = store, kv, node_id, prefix
        self.app = web.Application()
        self.service = blobs.add_routes(self.app, store, TOKEN, chunk_size=CHUNK)
        self.runner = web.AppRunner(self.app)
        self.fetcher: Fetcher | None = None

    async def start(self) -> Holder:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        self.fetcher = Fetcher(self.store, self.kv, self.node_id, url, TOKEN,
                               SyncConfig(chunk_size=CHUNK), prefix=self.prefix)
        await self.fetcher.announce_all()
        return self

    async def stop(self) -> None:
        if self.fetcher is not None:
            await self.fetcher.close()
        await self.runner.cleanup()


class PeerProcess:
    """``python -m ollamamax.sync.peer`` in a process of its own."""

    def __init__(self, tmp: Path, etcd: LocalEtcd, node_id: str, prefix: str, store: Path,
                 *args: str) -> None:
        self.ready = tmp / f"{node_id}.ready"
        self.done = Path(f"{self.ready}.done")
        self.log = tmp / f"{node_id}.log"
        self.argv = [sys.executable, "-m", "ollamamax.sync.peer", "--store", str(store),
                     "--etcd", etcd.url, "--node-id", node_id, "--prefix", prefix,
                     "--token", TOKEN, "--chunk-size", str(CHUNK), "--ready-file",
                     str(self.ready), *args]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PeerProcess:
        for path in (self.ready, self.done):
            path.unlink(missing_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        return self

    async def wait_for(self, path: Path, timeout: float = 20.0) -> dict:
        def written() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"peer exited {self.proc.returncode}:\n{self.log.read_text()}")
            return path.exists()

        await until(written, timeout, f"{path.name} written (log: {self.log})")
        return _read_json(path)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def processes():
    started: list[PeerProcess] = []
    yield started
    for proc in started:
        proc.stop()


def seed(root: Path, data: bytes) -> tuple[ModelStore, str]:
    store = ModelStore(root)
    digest, _ = store.write_blob_bytes(data)
    return store, digest


async def test_a_corrupt_holder_is_caught_and_its_chunks_come_from_another(
        kv, prefix, tmp_path, caplog) -> None:
    data = os.urandom(1_000_000)
    good_store, digest = seed(tmp_path / "good", data)
    bad_store, _ = seed(tmp_path / "bad", data)
    good = await Holder(good_store, kv, "good", prefix).start()
    bad = await Holder(bad_store, kv, "bad", prefix).start()  # announced with the right list...
    bad_store.blob_path(digest).write_bytes(os.urandom(len(data)))  # ...then its disk rots
    receiver = Fetcher(ModelStore(tmp_path / "receiver"), kv, "receiver", "http://127.0.0.1:9",
                       TOKEN, SyncConfig(chunk_size=CHUNK, max_sources=2), prefix=prefix, seed=1)
    try:
        with caplog.at_level(logging.WARNING, logger="ollamamax.sync.transfer"):
            await receiver.fetch(digest, len(data), announce=False)
    finally:
        await receiver.close()
        await bad.stop()
        await good.stop()
    assert receiver.store.blob_path(digest).read_bytes() == data
    assert bad.service.sent_bytes > 0  # it was asked, and what it sent was refused
    assert receiver.received == {"good": len(data)}
    assert "wrong sha256" in caplog.text
    assert not (receiver.store.root / ".ollamamax" / "transfers" / digest[7:]).exists()


async def test_a_holder_killed_mid_transfer_leaves_the_others_to_finish(
        etcd, kv, prefix, tmp_path, processes) -> None:
    data = os.urandom(3_000_000)
    holders = []
    for name in ("h1", "h2"):
        _, digest = seed(tmp_path / name, data)
        holders.append(PeerProcess(tmp_path, etcd, name, prefix, tmp_path / name,
                                   "--upload-mbps", "2").start())
        processes.append(holders[-1])
    for holder in holders:
        await holder.wait_for(holder.ready)
    receiver = Fetcher(ModelStore(tmp_path / "receiver"), kv, "receiver", "http://127.0.0.1:9",
                       TOKEN, SyncConfig(chunk_size=CHUNK, max_sources=2), prefix=prefix)
    killed_at: list[int] = []

    def progress(done: int, total: int) -> None:
        if not killed_at and done >= total // 3:
            holders[0].kill()  # SIGKILL: its record stays in etcd until its lease expires
            killed_at.append(done)

    try:
        await asyncio.wait_for(receiver.fetch(digest, len(data), progress, announce=False), 30)
    finally:
        await receiver.close()
    assert killed_at and killed_at[0] < len(data)
    assert receiver.store.blob_path(digest).read_bytes() == data
    assert receiver.received["h1"] > 0 and receiver.received["h2"] > 0
    assert receiver.received["h1"] + receiver.received["h2"] == len(data)


async def test_a_receiver_killed_9_resumes_with_only_the_missing_chunks(
        etcd, kv, prefix, tmp_path, processes) -> None:
    data = os.urandom(4_000_000)
    holder_store, digest = seed(tmp_path / "holder", data)
    holder = await Holder(holder_store, kv, "holder", prefix).start()
    receiver_store = ModelStore(tmp_path / "receiver")
    args = ("--fetch", f"{digest}:{len(data)}")
    first = PeerProcess(tmp_path, etcd, "receiver", prefix, receiver_store.root,
                        "--download-mbps", "2", *args).start()
    processes.append(first)
    listed = chunks.hash_file(holder_store.blob_path(digest), CHUNK)
    have_file = receiver_store.root / ".ollamamax" / "transfers" / digest[7:] / "have"
    try:
        # some chunks durable, most still to come
        await until(lambda: sum(_marks(have_file, listed.count)) >= 4, 30, "4 chunks kept")
        first.kill()
        marks = _marks(have_file, listed.count)
        assert 4 <= sum(marks) < listed.count
        await until(lambda: not holder.service.active, 10, "the killed receiver's responses end")
        missing = sum(listed.length(i) for i in range(listed.count) if not marks[i])
        holder.service.sent_bytes = 0

        second = PeerProcess(tmp_path, etcd, "receiver", prefix, receiver_store.root,
                             *args).start()
        processes.append(second)
        await second.wait_for(second.done)
        assert holder.service.sent_bytes == missing
        assert receiver_store.blob_path(digest).read_bytes() == data
        assert not have_file.exists()
    finally:
        await holder.stop()


async def test_a_blob_nobody_holds_fails_with_a_clear_error(kv, prefix, tmp_path) -> None:
    receiver = Fetcher(ModelStore(tmp_path / "receiver"), kv, "receiver", "http://127.0.0.1:9",
                       TOKEN, SyncConfig(chunk_size=CHUNK), prefix=prefix)
    with pytest.raises(TransferError, match="no node holds"):
        await receiver.fetch(f"sha256:{'c' * 64}", 10)
    await receiver.close()


def _marks(have_file: Path, count: int) -> list[int]:
    """The receiver's durable chunk marks (the file ends at the last chunk marked)."""
    raw = b""
    with contextlib.suppress(FileNotFoundError):
        raw = have_file.read_bytes()
    return list(raw.ljust(count, b"\0"))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.02)
