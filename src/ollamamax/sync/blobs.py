"""The blob service: a node serves its blobs (and the verified chunks of those it is still
downloading) to the other members of the cluster.

    GET /cluster/blobs/sha256:<hex>          the blob; a single ``Range: bytes=a-b`` -> 206
    GET /cluster/blobs/sha256:<hex>/chunks   {"size", "chunk_size", "hashes", "root", "have",
                                              "sending"}: the chunk list, which chunks this
                                              node can serve (base64 bitmap, see
                                              chunks.encode_have) and which it is sending now

Every route requires the cluster token (401 without). The name in the path is checked by
``check_digest`` before anything else, and the file is always ``blobs/sha256-<hex>`` (or the
partial file of that hex): no part of a request path ever reaches the filesystem otherwise.
A node still downloading answers ranges its verified chunks cover, 416 for the rest. Every
blob response also says what the node has (``X-OllamaMax-Have``: "all" or the bitmap) and
which byte ranges it is sending (``X-OllamaMax-Sending``), so a receiver polls ``/chunks``
only of holders it is not fetching from.

A complete blob goes out with ``web.FileResponse`` (``sendfile``: zero-copy, and it handles
the Range header itself) unless the node's upload is limited; then the bytes go out in
pieces of `PIECE`, each paced by the node's one token bucket (`Pacer`), shared by all uploads.
``?chunk_size=N`` on ``/chunks`` asks for the list at another chunk size (the one a
transfer agreed on, from etcd); ``?fields=have`` leaves the hashes out (cheap polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ollamamax.api.errors import error_response
from ollamamax.api.http import json_response
from ollamamax.errors import BadRequest, NotFound, OllamaMaxError, RequestError
from ollamamax.models.store import ModelStore, check_digest
from ollamamax.ratelimit import TokenBucket
from ollamamax.security.cluster import require_cluster_token
from ollamamax.sync import chunks

if TYPE_CHECKING:
    from ollamamax.metrics import SyncMetrics

HAVE_HEADER = "X-OllamaMax-Have"  # "all", or the base64 bitmap of a node still downloading
SENDING_HEADER = "X-OllamaMax-Sending"  # byte ranges being sent: "a-b,c-d" (half-open)
INSIST_HEADER = "X-OllamaMax-Insist"  # a receiver that waited: no 409 for recent chunks
RECENT_S = 2.0  # a chunk sent this recently is declined by a busy complete holder
PIECE = 256 << 10  # bytes written (and paced) at a time when not sending with sendfile
# uvloop has no loop.sendfile: aiohttp then reads the file in a worker thread, one piece at a
# time; larger pieces mean fewer thread hops (measured: 256 KiB pieces held one unthrottled
# transfer to ~300 MB/s on two cores)
FILE_PIECE = 4 << 20
MAX_CHUNK = 1 << 30
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Sleep = Callable[[float], Awaitable[None]]


class RangeNotSatisfiable(RequestError):
    status = 416


class Declined(RequestError):
    """409: this holder just sent that chunk to another node; ask the swarm (see `_dedupe`)."""

    status = 409

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers


def mbps_to_Bps(mbps: float) -> float:
    """MB/s (10^6 bytes, as the config says) to bytes per second."""
    return mbps * 1e6


class Pacer:
    """Bytes through one token bucket at `rate` bytes/s: `pace(n)` spends `n` (into debt if
    need be) and sleeps until the debt is paid, so every caller together stays at the rate."""

    def __init__(self, rate: float, burst: float | None = None, *, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        self._clock, self._sleep = clock, sleep
        # The burst only absorbs late wake-ups of a busy process (0.1 s of them): it starts
        # empty, so no transfer gets more than `rate` on average from the start.
        burst = burst or max(4 * PIECE, rate / 10)
        self.bucket = TokenBucket(rate, burst, clock())
        self.bucket.spend(burst, clock())

    async def pace(self, nbytes: int) -> None:
        wait = self.bucket.spend(nbytes, self._clock())
        if wait > 0:
            await self._sleep(wait)


def pacer(mbps: float) -> Pacer | None:
    """The pacer of a configured limit in MB/s (None: unlimited)."""
    return Pacer(mbps_to_Bps(mbps)) if mbps > 0 else None


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single-range header (None: no header, the whole blob);
    `RangeNotSatisfiable` for ranges outside the blob or several ranges."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        raise RangeNotSatisfiable(f"only one byte range is served, not {header!r}")
    first, last = match.groups()
    if not first:  # suffix: the last N bytes
        start, end = max(0, size - int(last)), size
    else:
        start, end = int(first), min(size, int(last) + 1) if last else size
    if start >= end or start >= size:
        raise RangeNotSatisfiable(f"range {header!r} is outside the blob ({size} bytes)")
    return start, end


class BlobService:
    """The handlers; `partials` is shared with this node's transfers (hex -> partial file)."""

    def __init__(self, store: ModelStore, token: str, *, chunk_size: int = 8 << 20,
                 upload: Pacer | None = None,
                 partials: dict[str, chunks.PartialFile] | None = None,
                 metrics: SyncMetrics | None = None) -> None:
        self.store, self.token, self.chunk_size = store, token, chunk_size
        self.upload = upload
        self.partials = partials if partials is not None else {}
        self.index = chunks.ChunkIndex(store)
        self.metrics = metrics
        self.sent_bytes = 0  # body bytes sent since start (what the benchmark reads)
        self.active = 0  # responses being sent now
        self._sending: dict[str, Counter[tuple[int, int]]] = {}
        self._recent: dict[str, dict[tuple[int, int], float]] = {}  # span -> when last sent
        self._clock: Clock = time.monotonic

    # -- GET /cluster/blobs/{digest} ---------------------------------------------------------

    async def blob(self, request: web.Request) -> web.StreamResponse:
        require_cluster_token(request, self.token)
        digest = request.match_info["digest"]
        hex_ = check_digest(digest)
        path = self.store.blob_path(digest)
        partial = self.partials.get(hex_)
        if path.is_file():
            size = path.stat().st_size
            span = parse_range(request.headers.get("Range"), size) or (0, size)
            state = {HAVE_HEADER: "all"}
            self._dedupe(request, hex_, span, state)
            if self.upload is None:
                return self._sendfile(request, hex_, path, span, state)
            with path.open("rb", buffering=0) as f:
                return await self._stream(request, hex_, size, span, state,
                                          lambda start, n: _pread(f.fileno(), start, n))
        if partial is not None:
            size = partial.chunks.size
            span = parse_range(request.headers.get("Range"), size) or (0, size)
            if not partial.has_range(*span):
                raise RangeNotSatisfiable(f"{digest}: bytes {span[0]}-{span[1] - 1} are not "
                                          "here yet (this node is still downloading it)")
            state = {HAVE_HEADER: chunks.encode_have(partial.have)}
            return await self._stream(request, hex_, size, span, state, partial.read)
        raise NotFound(f"blob {digest} is not on this node")

    def _dedupe(self, request: web.Request, hex_: str, span: tuple[int, int],
                state: dict[str, str]) -> None:
        """A complete holder busy uploading declines a chunk it sent another receiver within
        RECENT_S (409): that receiver can pass it on, and this upload is better spent on a
        chunk nobody has yet. So the origin sends each chunk about once, whatever receivers
        believe. A receiver that waited too long insists (``X-OllamaMax-Insist``)."""
        now = self._clock()
        sent = self._recent.setdefault(hex_, {})
        if (self.active and not request.headers.get(INSIST_HEADER)
                and now - sent.get(span, -math.inf) < RECENT_S):
            raise Declined(f"chunk {span[0]}-{span[1] - 1} went to another node moments ago: "
                           "fetch it from the swarm", headers=self._state(hex_, state))
        if len(sent) > 4096:
            sent.clear()
        sent[span] = now

    def _state(self, hex_: str, state: dict[str, str]) -> dict[str, str]:
        """What the receiver learns with each chunk, sparing it a ``/chunks`` call: what this
        node has, and which byte ranges it is sending (before this response)."""
        sending = ",".join(f"{a}-{b}" for a, b in self._sending.get(hex_, ()))
        return {**state, SENDING_HEADER: sending}

    @contextlib.contextmanager
    def _sending_span(self, hex_: str, span: tuple[int, int]) -> Iterator[None]:
        sending = self._sending.setdefault(hex_, Counter())
        sending[span] += 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            sending[span] -= 1
            if sending[span] <= 0:
                del sending[span]

    def _sendfile(self, request: web.Request, hex_: str, path: Path, span: tuple[int, int],
                  state: dict[str, str]) -> web.StreamResponse:
        response = _CountedFile(path, self, hex_, span)
        response.headers.update(self._state(hex_, state))
        return response

    async def _stream(self, request: web.Request, hex_: str, size: int, span: tuple[int, int],
                      state: dict[str, str],
                      read: Callable[[int, int], bytes]) -> web.StreamResponse:
        start, end = span
        whole = (start, end) == (0, size) and "Range" not in request.headers
        response = web.StreamResponse(status=200 if whole else 206)
        response.content_type = "application/octet-stream"
        response.content_length = end - start
        response.headers["Accept-Ranges"] = "bytes"
        response.headers.update(self._state(hex_, state))
        if not whole:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        with self._sending_span(hex_, span):
            await response.prepare(request)
            offset = start
            try:
                while offset < end:
                    n = min(PIECE, end - offset)
                    if self.upload is not None:
                        await self.upload.pace(n)
                    await response.write(read(offset, n))
                    self._count(n)
                    offset += n
            except OSError as exc:  # headers are gone: only a cut connection says it failed
                log.warning("sending %s bytes %d-%d failed at %d (%s); cutting the connection",
                            hex_[:12], start, end - 1, offset, exc)
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
        return response

    def _count(self, nbytes: int) -> None:
        self.sent_bytes += nbytes
        if self.metrics is not None:
            self.metrics.bytes.inc(("sent",), nbytes)

    # -- GET /cluster/blobs/{digest}/chunks --------------------------------------------------

    async def chunk_list(self, request: web.Request) -> web.Response:
        require_cluster_token(request, self.token)
        digest = request.match_info["digest"]
        hex_ = check_digest(digest)
        chunk_size = _chunk_size(request.query.get("chunk_size"), self.chunk_size)
        partial = self.partials.get(hex_)
        if self.store.has_blob(digest):
            try:
                listed = (self.index.peek(digest, chunk_size)
                          or await asyncio.to_thread(self.index.get, digest, chunk_size))
            except FileNotFoundError:  # removed in between
                raise NotFound(f"blob {digest} is not on this node") from None
            have = bytearray(b"\1" * listed.count)
        elif partial is not None:
            listed, have = partial.chunks, bytearray(partial.have)
        else:
            raise NotFound(f"blob {digest} is not on this node")
        doc: dict[str, object] = {"size": listed.size, "chunk_size": listed.chunk_size,
                                  "root": listed.root, "have": chunks.encode_have(have),
                                  "sending": self._sending_chunks(hex_, listed.chunk_size)}
        if request.query.get("fields") != "have":
            doc["hashes"] = listed.hashes
        return json_response(doc)

    def _sending_chunks(self, hex_: str, chunk_size: int) -> list[int]:
        found: set[int] = set()
        for start, end in self._sending.get(hex_, ()):
            found.update(range(start // chunk_size, (end - 1) // chunk_size + 1))
        return sorted(found)


class _CountedFile(web.FileResponse):
    """``web.FileResponse`` (sendfile, Range handled by aiohttp) that counts what it sent."""

    def __init__(self, path: Path, service: BlobService, hex_: str,
                 span: tuple[int, int]) -> None:
        super().__init__(path, chunk_size=FILE_PIECE)
        self._service, self._hex, self._span = service, hex_, span

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self.prepared:  # the handler's caller prepares it once more: nothing to do
            return None
        with self._service._sending_span(self._hex, self._span):
            writer = await super().prepare(request)
        if self.status in (200, 206):
            self._service._count(self.content_length or 0)
        return writer


def _pread(fd: int, start: int, n: int) -> bytes:
    return os.pread(fd, n, start)


def _chunk_size(value: str | None, default: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= MAX_CHUNK:
        raise BadRequest(f"chunk_size must be a whole number of bytes from 1 to {MAX_CHUNK}")
    return int(value)


def add_routes(app: web.Application, store: ModelStore, token: str, *,
               chunk_size: int = 8 << 20, upload_mbps: float = 0.0,
               partials: dict[str, chunks.PartialFile] | None = None,
               metrics: SyncMetrics | None = None) -> BlobService:
    """Serve `store`'s blobs on `app` to holders of `token`; returns the service (its
    counters, and the `partials` a node's transfers fill)."""
    service = BlobService(store, token, chunk_size=chunk_size, upload=pacer(upload_mbps),
                          partials=partials, metrics=metrics)
    app.router.add_get("/cluster/blobs/{digest}", _answering_errors(service.blob))
    app.router.add_get("/cluster/blobs/{digest}/chunks", _answering_errors(service.chunk_list))
    return service


def _answering_errors(handler: Handler) -> Handler:
    """Errors in Ollama's shape whatever middlewares the app has (a peer's may have none)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except OllamaMaxError as exc:
            return error_response(exc.status, exc.message, headers=exc.headers or None)

    return answer
