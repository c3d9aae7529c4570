"""A small Ollama registry for tests: the protocol `ollama pull` speaks, served from a folder.

    async with LocalRegistry(models_dir) as registry:     # Ollama's layout: manifests/ + blobs/
        await Puller(store, registry=registry.url).pull("tiny:latest")
        registry.bytes_served, registry.requests["GET blob"]

    GET|HEAD /v2/                                       200 {}
    GET|HEAD /v2/<namespace>/<model>/manifests/<tag>    the manifest file, byte for byte
    GET|HEAD /v2/<namespace>/<model>/blobs/<digest>     the blob; Range -> 206, bad range -> 416
    GET|HEAD /cdn/<digest>                              the same blob, where `redirect_blobs`
                                                        sends clients (307), as the real
                                                        registry sends them to its CDN

Knobs, changeable while it runs: `fail_after` (once that many blob bytes were served in all,
answers are cut mid-body and further blob requests get 503 until it is set back to None),
`stall_after` (the answer that crosses it stops sending and hangs until the registry stops;
the knob then clears itself: a one-off stall), `corrupt` (digests served with one byte
flipped). Counters: `requests` by ``"<METHOD> <kind>"``, `bytes_served`, `served` per digest,
and `ranges` (every blob range asked for). Binds 127.0.0.1; port 0 picks a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from pathlib import Path

from aiohttp import web

from ollamamax import server
from ollamamax.errors import BadRequest
from ollamamax.models import names
from ollamamax.models.store import MANIFEST_MEDIA_TYPE, ModelStore, check_digest

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 1 << 20  # knobs still cut and stall at exact bytes: a chunk is sliced


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range`` -> inclusive ``(first, last)``; None for the whole blob; `ValueError` when
    unsatisfiable or not a single byte range."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None or match.groups() == ("", ""):
        raise ValueError(header)
    first, last = match.groups()
    if first == "":  # the last N bytes
        n = int(last)
        if n == 0:
            raise ValueError(header)
        return max(0, size - n), size - 1
    start, end = int(first), min(int(last) if last else size - 1, size - 1)
    if start >= size or end < start:
        raise ValueError(header)
    return start, end


def _errors(status: int, code: str, message: str) -> web.Response:
    """The registry's error shape (docker distribution)."""
    return web.json_response({"errors": [{"code": code, "message": message}]}, status=status)


class LocalRegistry:
    def __init__(self, models_dir: str | Path, *, listen: str = "127.0.0.1:0",
                 redirect_blobs: bool = False) -> None:
        self.store = ModelStore(models_dir)
        self.listen = listen
        self.redirect_blobs = redirect_blobs
        self.fail_after: int | None = None
        self.stall_after: int | None = None
        self.corrupt: set[str] = set()
        self.requests: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.bytes_served = 0
        self.ranges: list[tuple[str, int, int]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    def reset_counters(self) -> None:
        self.requests.clear()
        self.served.clear()
        self.bytes_served = 0
        self.ranges.clear()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/", self.base)
        app.router.add_get("/v2/{namespace}/{model}/manifests/{tag}", self.manifest)
        app.router.add_get("/v2/{namespace}/{model}/blobs/{digest}", self.blob)
        app.router.add_get("/cdn/{digest}", self.blob)
        return app

    async def start(self) -> str:
        self._runner, self.url = await server.start_site(self.app(), self.listen, shutdown_timeout=1.0)
        return self.url

    async def stop(self) -> None:
        self._stopping.set()  # stalled answers end now
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LocalRegistry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- handlers --------------------------------------------------------------------------

    async def base(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def manifest(self, request: web.Request) -> web.Response:
        self.requests[f"{request.method} manifest"] += 1
        info = request.match_info
        try:
            name = names.parse(f"{info['namespace']}/{info['model']}:{info['tag']}")
        except BadRequest:
            return _errors(400, "NAME_INVALID", "invalid repository name")
        path = self._manifest_path(name)
        if path is None:
            return _errors(404, "MANIFEST_UNKNOWN", "manifest unknown")
        raw = path.read_bytes()
        return web.Response(body=raw, content_type=MANIFEST_MEDIA_TYPE)

    def _manifest_path(self, name: names.ModelName) -> Path | None:
        """Under Ollama's own host first, else under any host."""
        tail = (name.namespace, name.model, name.tag)
        preferred = self.store.manifests.joinpath(names.DEFAULT_HOST, *tail)
        if preferred.is_file():
            return preferred
        return next((p for p in self.store.manifests.glob("*/" + "/".join(tail)) if p.is_file()), None)

    async def blob(self, request: web.Request) -> web.StreamResponse:
        cdn = request.path.startswith("/cdn/")
        self.requests[f"{request.method} {'cdn' if cdn else 'blob'}"] += 1
        digest = request.match_info["digest"]
        try:
            path = self.store.blob_path(digest)
        except BadRequest:
            return _errors(400, "DIGEST_INVALID", "invalid digest")
        if not path.is_file():
            return _errors(404, "BLOB_UNKNOWN", "blob unknown to registry")
        if self.redirect_blobs and not cdn:
            raise web.HTTPTemporaryRedirect(f"/cdn/{digest}?expires=0&signature=test")
        size = path.stat().st_size
        try:
            span = parse_range(request.headers.get("Range"), size)
        except ValueError:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        if self.fail_after is not None and self.bytes_served >= self.fail_after:
            return _errors(503, "UNAVAILABLE", "the registry is failing (fail_after)")
        first, last = span if span is not None else (0, size - 1)
        headers = {"Content-Length": str(last - first + 1), "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
        if span is not None:
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        response = web.StreamResponse(status=206 if span is not None else 200, headers=headers)
        if request.method == "HEAD":
            await response.prepare(request)
            return response
        self.ranges.append((digest, first, last))
        await response.prepare(request)
        flip = size // 2 if f"sha256:{check_digest(digest)}" in self.corrupt else -1
        await self._send(request, response, path, f"sha256:{check_digest(digest)}", first, last, flip)
        return response

    async def _send(self, request: web.Request, response: web.StreamResponse, path: Path,
                    digest: str, first: int, last: int, flip: int) -> None:
        """Bytes `first`..`last` of the blob; the byte at `flip` (if any) inverted."""
        with path.open("rb") as f:
            f.seek(first)
            offset = first
            while offset <= last:
                chunk = f.read(min(_CHUNK, last - offset + 1))
                if offset <= flip < offset + len(chunk):
                    at = flip - offset
                    chunk = chunk[:at] + bytes([chunk[at] ^ 0xFF]) + chunk[at + 1:]
                cut, chunk = self._budget(chunk)
                if chunk:  # counted before the write, so concurrent answers share one budget
                    self.bytes_served += len(chunk)
                    self.served[digest] += len(chunk)
                    offset += len(chunk)
                    await response.write(chunk)
                if cut == "stall":
                    await self._stopping.wait()
                if cut:  # aiohttp's write_eof then meets a closed connection, quietly
                    if request.transport is not None:
                        request.transport.close()  # flushes what was written, then closes
                    return
        await response.write_eof()

    def _budget(self, chunk: bytes) -> tuple[str, bytes]:
        """How much of `chunk` may go out under the knobs, and whether to cut or stall after."""
        for knob, limit in (("fail", self.fail_after), ("stall", self.stall_after)):
            if limit is not None and self.bytes_served + len(chunk) >= limit:
                if knob == "stall":
                    self.stall_after = None  # a one-off, taken by the first answer to cross it
                return knob, chunk[:max(0, limit - self.bytes_served)]
        return "", chunk


async def serve(models_dir: str, listen: str, redirect_blobs: bool = False,
                announce_file: str | None = None) -> None:
    """Run a registry until SIGINT/SIGTERM (``ollamamax testing registry``)."""
    registry = LocalRegistry(models_dir, listen=listen, redirect_blobs=redirect_blobs)
    url = await registry.start()
    print(f"registry serving {models_dir} on {url}", flush=True)
    if announce_file:
        server.announce(announce_file, url=url)
    try:
        await server.wait_for_stop_signal()
    finally:
        with contextlib.suppress(Exception):
            await registry.stop()
