"""``ollamamax bench sync``: distributing one blob to N nodes, against the swarm lower bound.

On one machine: a real etcd (`LocalEtcd`), an origin holding a blob of `size_mb` MB and
`nodes` receivers, each a process of its own (``python -m ollamamax.sync.peer``: the blob
service, a `Fetcher`, holder records under its own lease), every one's upload limited to
`upload_mbps` by its token bucket, so the bound is computable:

- ``p2p_s``: from the fetch order given to every receiver at once to the last one holding the
  verified blob in its store, the receivers announcing (and serving) chunks as they arrive;
- ``naive_s``: the same with fresh receivers that announce nothing, so each pulls from the
  origin only;
- ``lower_bound_s``: ``max(S/U, N*S/((N+1)*U))``: the origin must send every byte once, and
  the N*S bytes received need the N+1 uploads;
- ``origin_egress_bytes``: what the origin sent during the P2P run;
- ``verified``: every receiver's copy, re-hashed here after the run, has the blob's digest.

``--unthrottled`` measures instead one transfer, origin to one receiver, no limits, chunk
verification and the whole-blob digest included (``Bps``). Where the stores live (`work_dir`)
matters there: each blob is fsynced before it enters a store, so a disk caps it at its sync
write speed; a tmpfs (``/dev/shm``) measures the transfer itself.

Processes are started and ready (imports done, listening, registered) before the clock starts.
``OLLAMAMAX_BENCH_PEER_LOG=debug`` makes every peer log each chunk it asks for, and of whom.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from ollamamax.cluster.local_etcd import LocalEtcd
from ollamamax.models.store import ModelStore
from ollamamax.security.cluster import cluster_headers

Progress = Callable[[str], object]
KEYS = ("nodes", "size_bytes", "upload_Bps", "lower_bound_s", "p2p_s", "naive_s",
        "origin_egress_bytes", "verified")
TOKEN = "bench-sync"
READY_S = 60.0
LOG_LEVEL = os.environ.get("OLLAMAMAX_BENCH_PEER_LOG", "info")  # "debug": every chunk asked


@dataclass(frozen=True)
class Options:
    nodes: int = 8
    size_mb: float = 64.0
    upload_mbps: float = 20.0
    chunk_size: int = 1 << 20
    max_sources: int = 8
    naive: bool = True  # also measure everyone-from-the-origin
    work_dir: str | None = None  # where stores go (default: the system's temp dir)

    @property
    def size_bytes(self) -> int:
        return int(self.size_mb * 1e6)

    @property
    def upload_Bps(self) -> float:
        return self.upload_mbps * 1e6


def lower_bound(size: int, nodes: int, upload_Bps: float) -> float:
    """The swarm lower bound (DESIGN.md, NOTES.md): max(S/U, N*S/((N+1)*U))."""
    return max(size / upload_Bps, nodes * size / ((nodes + 1) * upload_Bps))


def goals(result: dict[str, Any]) -> list[tuple[str, bool]]:
    if "p2p_s" not in result:
        return [("one unthrottled transfer with verification >= 500 MB/s",
                 result["Bps"] >= 500e6 and result["verified"])]
    found = [("P2P <= 1.25 x the lower bound", result["p2p_s"] <= 1.25 * result["lower_bound_s"]),
             ("origin egress <= 2 x the blob", result["origin_egress_bytes"]
              <= 2 * result["size_bytes"]),
             ("every copy verified", bool(result["verified"]))]
    return found


class Peer:
    """One peer process and how to talk to it."""

    def __init__(self, run: Path, etcd: LocalEtcd, name: str, prefix: str, *args: str) -> None:
        self.name, self.store = name, ModelStore(run / name)
        self.ready = run / f"{name}.ready"
        self.log = run / f"{name}.log"
        argv = [sys.executable, "-m", "ollamamax.sync.peer", "--store", str(self.store.root),
                "--etcd", etcd.url, "--node-id", name, "--prefix", prefix, "--token", TOKEN,
                "--ready-file", str(self.ready), "--log-level", LOG_LEVEL, *args]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.url = ""

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_S
        while not await asyncio.to_thread(self.ready.exists):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"peer {self.name} did not start: "
                                   f"{self.log.read_text()[-2000:]}")
            await asyncio.sleep(0.05)
        self.url = json.loads(self.ready.read_text())["url"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextlib.contextmanager
def _peers() -> Iterator[list[Peer]]:
    started: list[Peer] = []
    try:
        yield started
    finally:
        for peer in started:
            peer.stop()


def make_blob(store: ModelStore, size: int) -> str:
    """A random blob of `size` bytes in `store`; its digest."""

    class Random:
        def __init__(self) -> None:
            self.left = size

        def read(self, n: int) -> bytes:
            n = min(n, self.left)
            self.left -= n
            return os.urandom(n)

    digest, _ = store.write_blob(Random())  # type: ignore[arg-type]
    return digest


def _verified(peers: list[Peer], digest: str) -> bool:
    want = digest.split(":", 1)[1]
    for peer in peers:
        path = peer.store.blob_path(digest)
        if not path.is_file():
            return False
        h = hashlib.sha256()
        with path.open("rb") as f:
            while piece := f.read(8 << 20):
                h.update(piece)
        if h.hexdigest() != want:
            return False
    return True


async def _phase(run: Path, etcd: LocalEtcd, opts: Options, digest: str, phase: str,
                 nodes: int, limits: list[str], announce: bool,
                 progress: Progress) -> tuple[float, int, bool]:
    """Start an origin and `nodes` receivers under a prefix of their own, order every fetch
    at once; (seconds to the last, origin egress, every copy verified)."""
    prefix = f"bench-{phase}/"
    common = ["--chunk-size", str(opts.chunk_size), "--max-sources", str(opts.max_sources),
              *limits]
    with _peers() as peers:
        origin = Peer(run, etcd, f"{phase}-origin", prefix, *common)  # the store _seed filled
        peers.append(origin)
        receivers = [Peer(run, etcd, f"{phase}-r{i}", prefix, *common) for i in range(nodes)]
        peers.extend(receivers)
        await asyncio.gather(*(p.wait_ready() for p in peers))
        progress(f"{phase}: origin and {nodes} receivers ready; fetching {opts.size_bytes} bytes")
        async with aiohttp.ClientSession(headers=cluster_headers(TOKEN),
                                         timeout=aiohttp.ClientTimeout(total=3600)) as http:
            before = await _stats(http, origin)
            order = {"digest": digest, "size": opts.size_bytes, "announce": announce}
            started = time.perf_counter()
            finished = await asyncio.gather(*(_fetch(http, r, order, started) for r in receivers))
            seconds = max(finished)
            egress = (await _stats(http, origin))["sent"] - before["sent"]
            for r in receivers:
                got = (await _stats(http, r))["per_peer"]
                progress(f"  {r.name} got: " + ", ".join(f"{k} {v}" for k, v in sorted(got.items())))
        verified = await asyncio.to_thread(_verified, receivers, digest)
    progress(f"{phase}: {seconds:.2f} s, origin sent {egress} bytes, verified={verified}")
    return seconds, egress, verified


async def _fetch(http: aiohttp.ClientSession, peer: Peer, order: dict[str, Any],
                 started: float) -> float:
    async with http.post(f"{peer.url}/peer/fetch", json=order) as reply:
        if reply.status != 200:
            raise RuntimeError(f"{peer.name}: fetch failed: {await reply.text()}")
        await reply.read()
    return time.perf_counter() - started


async def _stats(http: aiohttp.ClientSession, peer: Peer) -> dict[str, Any]:
    async with http.get(f"{peer.url}/peer/stats") as reply:
        result: dict[str, Any] = await reply.json()
        return result


async def _run(opts: Options, unthrottled: bool, progress: Progress) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-sync-", dir=opts.work_dir) as tmp:
        run = Path(tmp)
        progress(f"writing a {opts.size_bytes}-byte random blob")
        with LocalEtcd(run / "etcd") as etcd:
            if unthrottled:
                return await _unthrottled(run, etcd, opts, progress)
            return await _swarm(run, etcd, opts, progress)


async def _seed(run: Path, phase: str, size: int) -> tuple[Path, str]:
    store = ModelStore(run / f"{phase}-origin")
    return store.root, await asyncio.to_thread(make_blob, store, size)


async def _swarm(run: Path, etcd: LocalEtcd, opts: Options, progress: Progress) -> dict[str, Any]:
    limits = ["--upload-mbps", str(opts.upload_mbps)]
    root, digest = await _seed(run, "p2p", opts.size_bytes)
    p2p_s, egress, verified = await _phase(run, etcd, opts, digest, "p2p", opts.nodes, limits,
                                           True, progress)
    naive_s = 0.0
    if opts.naive:
        await _seed_copy(run, root, digest)
        naive_s, _, naive_ok = await _phase(run, etcd, opts, digest, "naive", opts.nodes, limits,
                                            False, progress)
        verified = verified and naive_ok
    return {"nodes": opts.nodes, "size_bytes": opts.size_bytes, "upload_Bps": opts.upload_Bps,
            "lower_bound_s": round(lower_bound(opts.size_bytes, opts.nodes, opts.upload_Bps), 3),
            "p2p_s": round(p2p_s, 3), "naive_s": round(naive_s, 3),
            "origin_egress_bytes": egress, "verified": verified}


async def _seed_copy(run: Path, root: Path, digest: str) -> None:
    """The naive run's origin: the same blob, in a store of its own."""
    store = ModelStore(run / "naive-origin")
    await asyncio.to_thread(store.link_blob, ModelStore(root).blob_path(digest))


async def _unthrottled(run: Path, etcd: LocalEtcd, opts: Options,
                       progress: Progress) -> dict[str, Any]:
    _, digest = await _seed(run, "solo", opts.size_bytes)
    seconds, _, verified = await _phase(run, etcd, opts, digest, "solo", 1, [], False, progress)
    return {"nodes": 1, "size_bytes": opts.size_bytes, "upload_Bps": 0.0,
            "seconds": round(seconds, 3), "Bps": round(opts.size_bytes / seconds),
            "verified": verified}


def run(opts: Options, *, unthrottled: bool = False,
        progress: Progress = lambda _: None) -> dict[str, Any]:
    return asyncio.run(_run(opts, unthrottled, progress))


def write_json(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
