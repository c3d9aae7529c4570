"""Fetching a blob from the other nodes: chunked, from several holders at once, each chunk
verified before it is kept, resumable after a crash, spreading like a swarm.

`Fetcher.fetch(digest, size)`:

1. The chunk list comes from etcd (``sync/chunks/<digest>``), else from a complete holder's
   ``/chunks``; the holders from ``sync/holders/<digest>/``, refreshed as the transfer goes.
2. The partial file (``chunks.PartialFile``) is opened, keeping the chunks a killed earlier
   run completed; this node announces itself at once as a partial holder and serves the
   chunks it has verified (the blob service reads the same `partials`).
3. Up to ``max_sources`` chunk requests run at once, at most one per holder (two when fewer
   holders than that are usable). Which chunk: the rarest among the holders' bitmaps,
   counting chunks a holder is sending right now as held (so receivers asking the origin at
   the same moment take different chunks), ties broken at random. A complete holder busy
   uploading declines (409) a chunk it sent moments ago (``blobs.BlobService._dedupe``):
   the origin sends each chunk about once, receivers trade the rest. Which holder: the idle
   ones with the best rate over the last seconds (`RingWindow`) first among those offering
   the rarest chunk.
4. A chunk is hashed as its bytes arrive and kept only if its sha256 matches the list; a
   holder that sent a bad chunk is never asked for that chunk again, and after `MAX_FAULTS`
   faults (bad chunks, broken connections, errors) not at all for `COOL_OFF_S`: a dead
   holder is dropped that way before its lease ends.
5. When every chunk is here, the whole-blob digest (fed chunk by chunk in order while the
   transfer ran, in a thread of its own: ``PartialFile.hash_along``) must equal `digest`;
   only then the file is renamed into ``blobs/``. The node announces itself a complete
   holder.

Downloads go through the node's download `Pacer` (token bucket); bytes per holder feed a
`RingWindow` (`rates()`), and the node's ``ollamamax_sync_bytes`` counter.

`start_node_sync` is a node's startup in cluster mode: the fetcher on the node's membership
lease, its complete blobs announced, records put back whenever the lease is granted again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import ssl as ssl_
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
import msgspec

from ollamamax.cluster.lease import LeaseKeeper
from ollamamax.cluster.store import Store
from ollamamax.config import SyncConfig
from ollamamax.errors import StoreError, Unavailable
from ollamamax.models.bandwidth import RingWindow
from ollamamax.models.buffers import BufferPool
from ollamamax.models.store import ModelStore, check_digest
from ollamamax.security.cluster import cluster_headers
from ollamamax.sync import chunks
from ollamamax.sync.blobs import HAVE_HEADER, INSIST_HEADER, SENDING_HEADER, Pacer, pacer
from ollamamax.sync.holders import PROGRESS_EVERY_S, HolderBook, HolderRecord

if TYPE_CHECKING:
    from ollamamax.config import Config
    from ollamamax.metrics import SyncMetrics
    from ollamamax.node.agent import NodeAgent

log = logging.getLogger(__name__)

MAX_FAULTS = 3  # faults after which a holder is not asked again for COOL_OFF_S
COOL_OFF_S = 5.0
HOLDERS_EVERY_S = 0.25  # holders listed again from etcd (receivers join a swarm any time)
BITMAP_EVERY_S = 0.25  # a holder's /chunks asked when what it last said is older than this
TICK_S = 0.1  # the scheduler looks again at least this often
PATIENCE_S = 10.0  # no holder can serve a missing chunk for this long: give up
STALL_S = 15.0  # no byte from a holder for this long: that request failed
OWN_LEASE_TTL = 5
READ_BUFFER = 1 << 20  # aiohttp reads this much before pausing the socket (default 64 KiB)
PER_SOURCE = 2  # requests to one holder at once: two keep its pipe full
IMPATIENT_S = 0.5  # idle this long: ask anyone for anything (insisting past a 409)
DECLINED_S = 0.5  # a chunk a holder declined is not asked of it again for this long
FLUSH_BYTES = 64 << 20  # received chunks made durable (fdatasync) at least this often...
FLUSH_S = 0.5  # ...and this often: a crash costs at most that much refetching

Progress = Callable[[int, int], object]


class TransferError(Unavailable):
    """A blob could not be fetched: no holder has (the rest of) it, or what arrived was not
    the blob. The partial file keeps what was verified, for the next attempt."""


class ChunkFault(Exception):
    """A holder failed one chunk request (`bad`: it sent wrong bytes)."""

    def __init__(self, message: str, *, bad: bool = False, stale: bool = False) -> None:
        super().__init__(message)
        self.bad, self.stale = bad, stale


@dataclass
class Source:
    """A holder as one transfer sees it."""

    node_id: str
    url: str
    complete: bool
    have: bytearray | None = None  # None until its /chunks answered (complete: not needed)
    sending: frozenset[int] = frozenset()
    checked_at: float = -math.inf
    faults: int = 0
    inflight: int = 0
    bad: set[int] = field(default_factory=set)  # chunks it sent wrong
    declined: dict[int, float] = field(default_factory=dict)  # chunk -> when it said 409
    faulted_at: float = -math.inf  # its last fault

    def fault(self, now: float) -> None:
        self.faults += 1
        self.faulted_at = now

    @property
    def usable(self) -> bool:
        return self.faults < MAX_FAULTS

    def has(self, index: int) -> bool:
        if index in self.bad:
            return False
        return self.complete or (self.have is not None and bool(self.have[index]))


def pick(missing: set[int], sources: list[Source], per_source: int, rates: dict[str, float],
         rng: random.Random, now: float = 0.0) -> tuple[Source, int] | None:
    """The next (holder, chunk) to request, or None: the rarest chunk an idle holder offers
    (a chunk being sent counts as held: receivers asking the origin at the same moment take
    different chunks), from the least busy, then fastest recently, of the holders offering
    one that rare; ties at random. Rarest first keeps the origin asked for what only it has.
    A chunk a holder declined (409) moments ago is not asked of it again yet."""
    usable = [s for s in sources if s.usable]
    idle = [s for s in usable if s.inflight < per_source]
    if not missing or not idle:
        return None
    rarity = dict.fromkeys(missing, 0)
    for s in usable:
        for i in missing:
            if s.has(i) or i in s.sending:
                rarity[i] += 1
    best: tuple[tuple[int, int, int, float], Source, list[int]] | None = None
    for s in idle:
        offers = [i for i in missing if s.has(i) and now - s.declined.get(i, -math.inf) >= DECLINED_S]
        if not offers:
            continue
        least = min(rarity[i] for i in offers)
        rank = (least, s.inflight, s.faults, -rates.get(s.node_id, 0.0))
        if best is None or rank < best[0]:
            best = rank, s, sorted(i for i in offers if rarity[i] == least)
    if best is None:
        return None
    return best[1], rng.choice(best[2])


class Fetcher:
    """See the module docstring. `lease` (a lease id, or a function returning the current
    one) is what holder records live under; without it the fetcher keeps a lease of its own
    from the first announce until `close`."""

    def __init__(self, store: ModelStore, kv: Store, node_id: str, url: str, token: str,
                 config: SyncConfig, *, lease: int | Callable[[], int] = 0,
                 prefix: str = "ollamamax/",
                 partials: dict[str, chunks.PartialFile] | None = None,
                 metrics: SyncMetrics | None = None, clock: Callable[[], float] = time.monotonic,
                 seed: int | None = None, ssl: ssl_.SSLContext | None = None) -> None:
        self.store, self.kv, self.node_id, self.url = store, kv, node_id, url
        self.token, self.config = token, config
        self.partials = partials if partials is not None else {}
        self.metrics, self._clock, self._ssl = metrics, clock, ssl
        self.download: Pacer | None = pacer(config.download_mbps)
        self.window = RingWindow(window=5.0, buckets=10)
        self.received: dict[str, int] = {}  # bytes kept per holder since start
        self.index = chunks.ChunkIndex(store)
        self._keeper: LeaseKeeper | None = None
        self._own = not lease
        if callable(lease):
            self._lease: Callable[[], int] = lease
        elif lease:
            self._lease = lambda: lease
        else:
            self._lease = self._own_lease
        self.book = HolderBook(kv, node_id, url, self._lease, prefix=prefix)
        self._rng = random.Random(seed if seed is not None else zlib.crc32(node_id.encode()))
        self._running: dict[str, asyncio.Future[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    # -- the contract -------------------------------------------------------------------------

    async def fetch(self, digest: str, size: int, on_progress: Progress | None = None, *,
                    announce: bool = True) -> None:
        """Return once `digest` is complete, verified and in the store (see the module
        docstring). `announce=False`: take from holders, give nothing back (no holder
        records): what the benchmark's naive case does. `TransferError` on failure."""
        check_digest(digest)
        if self.store.has_blob(digest):
            return
        running = self._running.get(digest)
        if running is None:
            running = asyncio.ensure_future(self._fetch(digest, size, on_progress, announce))
            self._running[digest] = running
            running.add_done_callback(lambda _: self._running.pop(digest, None))
        await asyncio.shield(running)

    async def announce(self, digest: str) -> None:
        """Publish this node as a complete holder of a blob its store has (and the blob's
        chunk list, if no node published one yet)."""
        listed = await asyncio.to_thread(self.index.get, digest, self.config.chunk_size)
        await self._ensure_lease()
        with contextlib.suppress(StoreError):
            await self.book.publish_chunk_list(digest, listed)
        await self.book.announce(digest, complete=True)

    async def announce_all(self) -> int:
        """Announce every complete blob in the store; how many."""
        count = 0
        for digest in self.store.local_blobs():
            await self.announce(digest)
            count += 1
        return count

    def rates(self) -> dict[str, float]:
        """Bytes per second received from each holder over the last few seconds."""
        now = self._clock()
        return {peer: self.window.rate(peer, now) for peer in self.window.totals}

    def transfers(self) -> list[tuple[str, str, str, int, int]]:
        """Transfers under way, as the node's metrics read them (digest, source, target,
        done, total)."""
        return [(p.digest, "swarm", self.node_id, p.done_bytes, p.chunks.size)
                for p in list(self.partials.values())]

    async def close(self) -> None:
        for running in list(self._running.values()):
            running.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._keeper is not None:
            await self._keeper.stop(revoke=True)
            self._keeper = None

    # -- one transfer ---------------------------------------------------------------------

    async def _fetch(self, digest: str, size: int, on_progress: Progress | None,
                     announce: bool) -> None:
        started = self._clock()
        listed = await self._chunk_list(digest)
        if listed.size != size:
            raise TransferError(f"{digest}: holders describe {listed.size} bytes, not {size}")
        partial = chunks.PartialFile(self.store, digest, listed)
        kept = await asyncio.to_thread(partial.open)
        if kept:
            log.info("%s: resuming with %d of %d chunks already here", digest, kept, listed.count)
        self.partials[partial.hex] = partial
        try:
            if announce:
                await self._ensure_lease()
                await self.book.announce(digest, complete=False)
            run = _Run(self, partial, on_progress, announce)
            await run.until_complete()
            await self._finish(partial, announce)
        except BaseException:
            if announce:  # no longer serving its chunks: peers should not ask
                with contextlib.suppress(StoreError):
                    await self.book.withdraw(digest)
            raise
        finally:
            self.partials.pop(partial.hex, None)
            partial.close()
        elapsed = self._clock() - started
        log.info("%s: %d bytes fetched and verified in %.2f s", digest, size, elapsed)

    async def _finish(self, partial: chunks.PartialFile, announce: bool) -> None:
        whole = await asyncio.to_thread(partial.hash_along)
        if whole != partial.hex:
            partial.discard()
            raise TransferError(f"{partial.digest}: the assembled blob hashes to sha256:{whole}; "
                                "its chunk list did not describe this blob (nothing was kept)")
        await asyncio.to_thread(self.store.commit_verified_blob, partial.data_path, partial.digest)
        partial.moved_to = self.store.blob_path(partial.digest)
        self.index.put(partial.hex, partial.chunks)
        partial.discard()
        if announce:
            with contextlib.suppress(StoreError):
                await self.book.publish_chunk_list(partial.digest, partial.chunks)
            await self.book.announce(partial.digest, complete=True)
            with contextlib.suppress(StoreError):
                await self.book.clear_progress(partial.digest)

    async def _chunk_list(self, digest: str) -> chunks.ChunkList:
        listed = await self.book.chunk_list(digest)
        if listed is not None:
            return listed
        saved = chunks.PartialFile.saved_list(self.store, digest)
        if saved is not None:
            return saved
        for record in (await self.book.holders(digest)).values():
            if record.complete:
                with contextlib.suppress(ChunkFault, aiohttp.ClientError, TimeoutError, ValueError):
                    return chunks.decode(await self._get(
                        f"{record.url}/cluster/blobs/{digest}/chunks"
                        f"?chunk_size={self.config.chunk_size}"))
        raise TransferError(f"{digest}: no node holds this blob (no holder record under "
                            f"{self.book.keys.holders(digest)})")

    # -- plumbing ---------------------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=cluster_headers(self.token),
                timeout=aiohttp.ClientTimeout(sock_connect=2.0, sock_read=STALL_S),
                connector=aiohttp.TCPConnector(limit=0, ssl=self._ssl if self._ssl else True),
                read_bufsize=READ_BUFFER)
        return self._session

    async def _get(self, url: str) -> bytes:
        async with self.session().get(url) as response:
            if response.status != 200:
                raise ChunkFault(f"{url}: HTTP {response.status}")
            return await response.read()

    async def _ensure_lease(self) -> None:
        if self._own and self._keeper is None:
            self._keeper = LeaseKeeper(self.kv, OWN_LEASE_TTL)
            await self._keeper.start()

    def _own_lease(self) -> int:
        return self._keeper.lease if self._keeper is not None else 0


class _Run:
    """The chunk scheduler of one transfer (see `pick`)."""

    def __init__(self, fetcher: Fetcher, partial: chunks.PartialFile,
                 on_progress: Progress | None, announce: bool) -> None:
        self.f, self.partial, self.on_progress, self.announce = fetcher, partial, on_progress, announce
        self.digest = partial.digest
        self.sources: dict[str, Source] = {}
        self.inflight: dict[asyncio.Task[None], tuple[Source, int]] = {}
        self.listed_at = -math.inf
        self.starved_since: float | None = None
        self.progress_at = -math.inf
        self.flushed_at = fetcher._clock()
        self.buffers = BufferPool(partial.chunks.chunk_size, keep=fetcher.config.max_sources + 1)
        self.idle_since = fetcher._clock()  # when this transfer last had a request in flight
        self.hasher: asyncio.Future[str | None] | None = None

    async def until_complete(self) -> None:
        try:
            while not self.partial.complete or self.inflight:  # every task counted
                await self._refresh()
                self._start_requests()
                if not self.inflight:
                    self._starving()
                    await asyncio.sleep(TICK_S)
                    continue
                self.starved_since = None
                done, _ = await asyncio.wait(self.inflight, timeout=TICK_S,
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    await self._settle(task)
        finally:
            for task in self.inflight:
                task.cancel()
            await asyncio.gather(*self.inflight, return_exceptions=True)
            if self.hasher is not None:
                await asyncio.gather(self.hasher, return_exceptions=True)
            await asyncio.to_thread(self.partial.flush)

    def _missing(self) -> set[int]:
        busy = {i for _, i in self.inflight.values()}
        return {i for i, flag in enumerate(self.partial.have) if not flag and i not in busy}

    def _start_requests(self) -> None:
        cap = self.f.config.max_sources
        usable = [s for s in self.sources.values() if s.usable]
        per_source = min(PER_SOURCE, max(1, cap // max(1, len(usable))))
        rates = self.f.rates()
        now = self.f._clock()
        if self.inflight:
            self.idle_since = now
        insist = now - self.idle_since >= IMPATIENT_S
        while len(self.inflight) < cap:
            choice = pick(self._missing(), usable, per_source, rates, self.f._rng,
                          math.inf if insist else now)  # insisting: past declines too
            if choice is None:
                return
            source, index = choice
            log.debug("%s: chunk %d from %s", self.f.node_id, index, source.node_id)
            source.inflight += 1
            task = asyncio.create_task(self._chunk(source, index, insist))
            self.inflight[task] = (source, index)

    def _starving(self) -> None:
        now = self.f._clock()
        if self.starved_since is None:
            self.starved_since = now
        elif now - self.starved_since > PATIENCE_S:
            missing = sum(1 for flag in self.partial.have if not flag)
            raise TransferError(f"{self.digest}: no holder could serve {missing} missing chunks "
                                f"for {PATIENCE_S:g} s (holders: "
                                f"{', '.join(self.sources) or 'none'})")

    async def _settle(self, task: asyncio.Task[None]) -> None:
        source, index = self.inflight.pop(task)
        source.inflight -= 1
        exc = task.exception()
        if exc is None:
            await self._progress()
            return
        if isinstance(exc, ChunkFault) and exc.stale:
            if source.have is not None and index not in source.declined:
                source.have[index] = 0
            return
        source.fault(self.f._clock())
        if isinstance(exc, ChunkFault) and exc.bad:
            source.bad.add(index)
        why = str(exc) or type(exc).__name__
        if source.usable:
            log.warning("%s: chunk %d from %s failed (%s); fetching it elsewhere", self.digest,
                        index, source.node_id, why)
        else:
            log.warning("%s: dropped holder %s after %d faults (last: %s)", self.digest,
                        source.node_id, source.faults, why)

    async def _progress(self) -> None:
        done, total = self.partial.done_bytes, self.partial.chunks.size
        if self.on_progress is not None:
            self.on_progress(done, total)
        now = self.f._clock()
        if self.announce and now - self.progress_at >= PROGRESS_EVERY_S:
            self.progress_at = now
            with contextlib.suppress(StoreError):
                await self.f.book.progress(self.digest, done, total)

    # -- holders ------------------------------------------------------------------------------

    async def _refresh(self) -> None:
        now = self.f._clock()
        if now - self.listed_at >= HOLDERS_EVERY_S:
            self.listed_at = now
            try:
                self._merge(await self.f.book.holders(self.digest))
            except StoreError as exc:
                log.debug("%s: listing holders failed (%s)", self.digest, exc)
        for source in self.sources.values():
            if not source.usable and now - source.faulted_at >= COOL_OFF_S:
                source.faults = MAX_FAULTS - 1  # one more chance: it may have been only slow
        stale = [s for s in self.sources.values()
                 if s.usable and now - s.checked_at >= BITMAP_EVERY_S]
        if stale:
            await asyncio.gather(*(self._bitmap(s, now) for s in stale))

    def _merge(self, records: dict[str, HolderRecord]) -> None:
        for node_id, record in records.items():
            known = self.sources.get(node_id)
            if known is None or known.url != record.url:
                self.sources[node_id] = Source(node_id, record.url, record.complete)
            else:
                known.complete = record.complete

    async def _bitmap(self, source: Source, now: float) -> None:
        source.checked_at = now
        listed = self.partial.chunks
        url = (f"{source.url}/cluster/blobs/{self.digest}/chunks"
               f"?chunk_size={listed.chunk_size}&fields=have")
        try:
            async with asyncio.timeout(2.0):
                doc = msgspec.json.decode(await self.f._get(url))
            if doc.get("size") != listed.size or doc.get("chunk_size") != listed.chunk_size:
                raise ChunkFault(f"{source.node_id} describes the blob differently")
            source.have = chunks.decode_have(doc.get("have", ""), listed.count)
            source.sending = frozenset(i for i in doc.get("sending", ()) if isinstance(i, int))
        except (ChunkFault, aiohttp.ClientError, TimeoutError, ValueError, AttributeError,
                msgspec.DecodeError) as exc:
            source.fault(self.f._clock())
            log.debug("%s: /chunks of %s failed (%s)", self.digest, source.node_id, exc)

    def _absorb(self, source: Source, headers: Mapping[str, str]) -> None:
        """A holder's state as its chunk response told it (what it has, what it sends)."""
        have = headers.get(HAVE_HEADER)
        if have is None:
            return
        count = self.partial.chunks.count
        try:
            source.have = bytearray(b"\1" * count) if have == "all" else chunks.decode_have(
                have, count)
            size = self.partial.chunks.chunk_size
            sending: set[int] = set()
            for span in filter(None, headers.get(SENDING_HEADER, "").split(",")):
                start, _, end = span.partition("-")
                sending.update(range(int(start) // size, (int(end) - 1) // size + 1))
            source.sending = frozenset(i for i in sending if i < count)
        except ValueError:
            return
        source.checked_at = self.f._clock()

    # -- one chunk ----------------------------------------------------------------------------

    async def _chunk(self, source: Source, index: int, insist: bool) -> None:
        buf = self.buffers.acquire()  # reused: a fresh 8 MiB buffer costs its page faults
        try:
            length, digest = await self._receive(source, index, insist, memoryview(buf))
            if digest != self.partial.chunks.hashes[index]:
                raise ChunkFault(f"{source.node_id} sent chunk {index} with the wrong sha256",
                                 bad=True)
            await asyncio.to_thread(self._keep, index, memoryview(buf)[:length])
        finally:
            self.buffers.release(buf)
        self._hash_along()
        self.f.received[source.node_id] = self.f.received.get(source.node_id, 0) + length
        if self.f.metrics is not None:
            self.f.metrics.bytes.inc(("received",), length)

    async def _receive(self, source: Source, index: int, insist: bool,
                       buf: memoryview) -> tuple[int, str]:
        """Chunk `index` from `source` into `buf`, hashed as it arrives (no second pass over
        it); its length and sha256."""
        start, end = self.partial.chunks.span(index)
        length = end - start
        url = f"{source.url}/cluster/blobs/{self.digest}"
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if insist:
            headers[INSIST_HEADER] = "1"
        pos = 0
        async with self.f.session().get(url, headers=headers) as response:
            if response.status in (409, 416):
                self._absorb(source, response.headers)
                if response.status == 409:
                    source.declined[index] = self.f._clock()
                raise ChunkFault(f"{source.node_id} does not offer chunk {index} now", stale=True)
            if response.status != 206:
                raise ChunkFault(f"{source.node_id} answered HTTP {response.status}")
            self._absorb(source, response.headers)
            digest = hashlib.sha256()
            async for piece in response.content.iter_any():
                if pos + len(piece) > length:
                    raise ChunkFault(f"{source.node_id} sent more than chunk {index}")
                digest.update(piece)
                buf[pos:pos + len(piece)] = piece
                pos += len(piece)
                if self.f.download is not None:
                    await self.f.download.pace(len(piece))
                self.f.window.record(source.node_id, len(piece), self.f._clock())
        if pos != length:
            raise ChunkFault(f"{source.node_id} sent {pos} of {length} bytes of chunk {index}")
        return length, digest.hexdigest()

    def _hash_along(self) -> None:
        """Feed the whole-blob digest in a thread of its own, off the chunks' critical path
        (reading back from the page cache what the chunks' threads wrote)."""
        if self.hasher is None or self.hasher.done():
            self.hasher = asyncio.ensure_future(asyncio.to_thread(self.partial.hash_along))

    def _keep(self, index: int, data: memoryview) -> None:
        """Write a verified chunk (in a worker thread); make what arrived durable every
        FLUSH_BYTES or FLUSH_S."""
        self.partial.write(index, data)
        now = self.f._clock()
        if self.partial.pending_bytes >= FLUSH_BYTES or now - self.flushed_at >= FLUSH_S:
            self.flushed_at = now
            self.partial.flush()


# -- a node's startup in cluster mode ----------------------------------------------------------

class NodeSync:
    """What `start_node_sync` started: the fetcher, and the task that puts holder records
    back after the node's lease was granted again."""

    def __init__(self, fetcher: Fetcher, lease: Callable[[], int]) -> None:
        self.fetcher, self._lease = fetcher, lease
        self._task: asyncio.Task[None] | None = None

    def start(self, every: float = 1.0) -> None:
        self._task = asyncio.create_task(self._run(every), name="sync-holders")

    async def _run(self, every: float) -> None:
        """Announce the store's blobs (hashing a new one for its chunk list can take a while:
        not on the node's startup path), then follow the lease."""
        seen = self._lease()
        try:
            count = await self.fetcher.announce_all()
        except StoreError as exc:
            log.warning("could not announce this node's blobs (%s); they are announced when "
                        "the lease is granted again", exc)
        else:
            log.info("%s announced %d blobs to the cluster", self.fetcher.node_id, count)
        while True:
            await asyncio.sleep(every)
            lease = self._lease()
            if lease and lease != seen:
                written = await self.fetcher.book.republish()
                log.info("announced %d blobs again under lease %x", written, lease)
                seen = lease

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.fetcher.close()


async def start_node_sync(conf: Config, agent: NodeAgent, kv: Store,
                          lease: Callable[[], int]) -> NodeSync:
    """Cluster mode in a node: a `Fetcher` on the node's store, URL and membership lease,
    sharing the blob service's partial files; every complete blob announced."""
    from ollamamax.security import tls

    context = tls.client_context(conf.security) if tls.wants_client_context(conf.security) else None
    fetcher = Fetcher(agent.blob_store, kv, agent.node_id, agent.url, conf.security.token(),
                      conf.sync, lease=lease, prefix=conf.cluster.prefix,
                      partials=agent.partials, metrics=agent.metrics.sync, ssl=context)
    agent.metrics.sync.transfers = fetcher.transfers
    sync = NodeSync(fetcher, lease)
    sync.start()
    return sync

