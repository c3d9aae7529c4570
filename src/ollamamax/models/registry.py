"""Pulling models from an Ollama registry (``ollamamax models pull``, a node's ``POST /api/pull``).

The protocol `ollama pull` speaks (docs/models.md):

    GET <registry>/v2/<namespace>/<model>/manifests/<tag>   Accept: docker manifest v2
    GET <registry>/v2/<namespace>/<model>/blobs/<digest>     Range: bytes=a-b (redirects followed)

Each missing blob is fetched in ranged parts, in parallel (`sync.pull_parts` requests at once;
parts of 100 MB to 1 GB, as Ollama, so a small blob is one part), into
``<store>/.ollamamax/partial/sha256-<hex>.part``. A sidecar ``.json`` says how far each part
got; it is written only after the data it counts is fsynced, so after an interruption or a
crash exactly the bytes it does not count are fetched again. A part that receives nothing for
`sync.stall_timeout` seconds is retried from where it stopped. A finished blob is hashed and
moved into ``blobs/`` only when its sha256 matches its digest (a mismatch deletes it); the
manifest is written last, byte for byte as the registry sent it, so its sha256 is the ID
`ollama list` shows.

Progress goes to a callback as the dicts Ollama streams from ``/api/pull``:
``{"status": "pulling manifest"}``, ``{"status": "pulling <hex12>", "digest", "total",
"completed"}``, ``{"status": "verifying sha256 digest"}``, ``{"status": "writing manifest"}``,
``{"status": "success"}``. Errors: an unknown model is `NotFound` with Ollama's sentence
(``pull model manifest: file does not exist``), an unreachable registry `Unavailable`, and a
registry that misbehaves (a corrupt blob, no progress after retries) `PullError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import msgspec

from ollamamax.config import SyncConfig, is_loopback_url
from ollamamax.errors import BadRequest, NotFound, OllamaMaxError, Unavailable
from ollamamax.models import names
from ollamamax.models.store import MANIFEST_MEDIA_TYPE, LocalModel, ModelStore, check_digest

log = logging.getLogger(__name__)

MIN_PART = 100 * 1000 * 1000  # Ollama's part sizes: at least 100 MB ...
MAX_PART = 1000 * 1000 * 1000  # ... at most 1 GB
MAX_MANIFEST = 4 << 20
NOT_FOUND = "pull model manifest: file does not exist"  # what Ollama says

Progress = Callable[[dict[str, Any]], None]


class PullError(OllamaMaxError):
    """The registry misbehaved: a corrupt blob, a bad manifest, no progress after retries."""

    status = 502


# -- pure parts --------------------------------------------------------------------------------


class Layer(NamedTuple):
    digest: str  # sha256:<hex>, checked
    size: int
    media_type: str


def parse_manifest(raw: bytes) -> list[Layer]:
    """The blobs of a registry manifest, config first; `PullError` if it is not one."""
    try:
        doc = msgspec.json.decode(raw)
        refs = [doc["config"], *doc["layers"]]
        layers = [Layer(f"sha256:{check_digest(r['digest'])}", r["size"], str(r.get("mediaType", "")))
                  for r in refs]
    except (msgspec.DecodeError, KeyError, TypeError, BadRequest) as exc:
        raise PullError(f"pull model manifest: the registry sent an invalid manifest ({exc})") from None
    for layer in layers:
        if type(layer.size) is not int or layer.size < 0:
            raise PullError(f"pull model manifest: invalid size for {layer.digest}")
    return layers


def plan_parts(size: int, max_parts: int, min_part: int = MIN_PART,
               max_part: int = MAX_PART) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` to fetch a blob of `size` in, as Ollama cuts them: `size`
    split `max_parts` ways, each part clamped to ``[min_part, max_part]``."""
    if size <= 0:
        return []
    part = min(max(math.ceil(size / max_parts), min_part), max_part)
    return [(start, min(start + part, size)) for start in range(0, size, part)]


def registry_base(name: names.ModelName, configured: str, explicit: str | None = None,
                  insecure: bool = False) -> str:
    """The registry URL for `name`: `explicit` if given, else the configured registry for
    Ollama's own host, else the host the name carries (https unless `insecure`)."""
    if explicit:
        if not explicit.startswith(("http://", "https://")):
            raise BadRequest(f"registry {explicit!r} must be an http(s) URL")
        return explicit.rstrip("/")
    if name.host == names.DEFAULT_HOST:
        return configured.rstrip("/")
    return f"{'http' if insecure else 'https'}://{name.host}"


def manifest_url(base: str, name: names.ModelName) -> str:
    return f"{base}/v2/{name.namespace}/{name.model}/manifests/{name.tag}"


def blob_url(base: str, name: names.ModelName, digest: str) -> str:
    return f"{base}/v2/{name.namespace}/{name.model}/blobs/{digest}"


def pulling(digest: str, total: int, completed: int) -> dict[str, Any]:
    """Ollama's progress event for one blob."""
    return {"status": f"pulling {check_digest(digest)[:12]}", "digest": digest, "total": total,
            "completed": completed}


@dataclass(slots=True)
class Part:
    start: int
    end: int
    done: int = 0  # bytes written (and, once checkpointed, fsynced) from `start`

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(slots=True)
class PartialBlob:
    """A download in progress: the parts of one blob and how far each got."""

    digest: str
    size: int
    parts: list[Part] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return sum(p.done for p in self.parts)

    def to_json(self) -> bytes:
        return msgspec.json.encode({"digest": self.digest, "size": self.size,
                                    "parts": [[p.start, p.end, p.done] for p in self.parts]})

    @classmethod
    def resume(cls, digest: str, size: int, plan: list[tuple[int, int]],
               saved: bytes | None) -> PartialBlob:
        """The saved state when it describes this blob cut this way, else a fresh start."""
        fresh = cls(digest, size, [Part(a, b) for a, b in plan])
        if not saved:
            return fresh
        try:
            doc = msgspec.json.decode(saved)
            parts = [Part(a, b, d) for a, b, d in doc["parts"]]
        except (msgspec.DecodeError, KeyError, TypeError, ValueError):
            return fresh
        if doc.get("digest") != digest or doc.get("size") != size or \
                [(p.start, p.end) for p in parts] != plan or \
                any(not 0 <= p.done <= p.length for p in parts):
            return fresh
        return cls(digest, size, parts)


# -- the I/O shell -----------------------------------------------------------------------------


class Puller:
    """Pulls models from a registry into a `ModelStore`."""

    def __init__(self, store: ModelStore, config: SyncConfig | None = None, *,
                 registry: str | None = None, min_part: int = MIN_PART,
                 max_part: int = MAX_PART, retries: int = 3, backoff: float = 0.5,
                 checkpoint_s: float = 1.0, connect_timeout: float = 10.0,
                 progress_interval: float = 0.1) -> None:
        self.store = store
        self.config = config or SyncConfig()
        self.registry = registry
        self.min_part = min_part
        self.max_part = max_part
        self.retries = retries
        self.backoff = backoff
        self.checkpoint_s = checkpoint_s
        self.connect_timeout = connect_timeout
        self.progress_interval = progress_interval
        self._locks: dict[str, asyncio.Lock] = {}

    async def events(self, name: str, insecure: bool = False) -> AsyncIterator[dict[str, Any]]:
        """The pull's progress events as they happen; the pull's error is raised at the end.
        Closing the iterator early cancels the pull (what is downloaded stays for a resume)."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        task = asyncio.create_task(self.pull(name, queue.put_nowait, insecure=insecure),
                                   name=f"pull {name}")
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (event := await queue.get()) is not None:
                yield event
            await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            elif not task.cancelled():
                task.exception()  # the caller left early: its error is seen, not logged at exit

    async def pull(self, name: str, on_progress: Progress | None = None, *,
                   insecure: bool = False) -> LocalModel:
        """Fetch `name` into the store; return it once its manifest is written. `insecure`:
        plain http to a registry named in `name` (as ``ollama pull --insecure``)."""
        report = on_progress or (lambda _event: None)
        parsed = names.parse(name)
        base = registry_base(parsed, self.config.registry, self.registry, insecure)
        async with self._session(base) as session:
            report({"status": "pulling manifest"})
            raw = await self._manifest(session, base, parsed)
            layers = parse_manifest(raw)
            self._check_space(layers)
            semaphore = asyncio.Semaphore(self.config.pull_parts)
            try:
                async with asyncio.TaskGroup() as tg:
                    for layer in dict.fromkeys(layers):
                        tg.create_task(self._download(session, blob_url(base, parsed, layer.digest),
                                                      layer, semaphore, report))
            except* OllamaMaxError as group:
                raise group.exceptions[0] from None
        report({"status": "verifying sha256 digest"})
        for layer in dict.fromkeys(layers):
            await self._adopt(layer)
        report({"status": "writing manifest"})
        try:
            model = self.store.write_manifest_bytes(parsed.short, raw)
        except OSError as exc:
            raise PullError(f"writing the manifest of {parsed.short}: {exc.strerror or exc}") from None
        report({"status": "success"})
        log.info("pulled %s from %s (%d blobs, %.1f MB)", parsed.short, base, len(layers),
                 sum(layer.size for layer in layers) / 1e6)
        return model

    # -- manifest ----------------------------------------------------------------------------

    def _session(self, base: str) -> aiohttp.ClientSession:
        # Environment proxies apply to real registries, never to one on this machine.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout,
                                        sock_read=self.config.stall_timeout)
        return aiohttp.ClientSession(timeout=timeout, auto_decompress=False,
                                     trust_env=not is_loopback_url(base))

    async def _manifest(self, session: aiohttp.ClientSession, base: str,
                        name: names.ModelName) -> bytes:
        url = manifest_url(base, name)
        try:
            async with session.get(url, headers={"Accept": MANIFEST_MEDIA_TYPE}) as resp:
                if resp.status == 404:
                    raise NotFound(NOT_FOUND)
                if resp.status in (401, 403):
                    raise PullError(f"pull model manifest: {base} refused access (HTTP {resp.status})")
                if resp.status != 200:
                    raise PullError(f"pull model manifest: {base} answered HTTP {resp.status}")
                raw = await resp.content.read(MAX_MANIFEST + 1)
        except aiohttp.ClientError as exc:
            raise Unavailable(f"pull model manifest: cannot reach {base}: {_describe(exc)}") from None
        except TimeoutError:
            raise Unavailable(f"pull model manifest: {base} did not answer in time") from None
        if len(raw) > MAX_MANIFEST:
            raise PullError(f"pull model manifest: over {MAX_MANIFEST} bytes")
        return raw

    def _check_space(self, layers: list[Layer]) -> None:
        missing = sum(layer.size for layer in dict.fromkeys(layers) if not self.store.has_blob(layer.digest))
        try:
            self.store.root.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.store.root).free
        except OSError as exc:
            raise PullError(f"cannot use {self.store.root}: {exc.strerror or exc}") from None
        if missing > free:
            raise PullError(f"not enough disk space in {self.store.root}: the model needs "
                            f"{missing / 1e9:.2f} GB more, {free / 1e9:.2f} GB are free")

    # -- blobs -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _claim(self, digest: str) -> AsyncIterator[None]:
        """One download of `digest` at a time: in this process (a lock) and across processes
        (an advisory lock on a file in the partial area)."""
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            self.store.partial.mkdir(parents=True, exist_ok=True)
            path = self.store.partial / f"sha256-{check_digest(digest)}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise PullError(f"another process is pulling {digest} into "
                                    f"{self.store.root}") from None
                yield
            finally:
                os.close(fd)

    def _paths(self, digest: str) -> tuple[Path, Path]:
        stem = self.store.partial / f"sha256-{check_digest(digest)}"
        return stem.with_suffix(".part"), stem.with_suffix(".json")

    async def _download(self, session: aiohttp.ClientSession, url: str, layer: Layer,
                        semaphore: asyncio.Semaphore, report: Progress) -> None:
        if self.store.has_blob(layer.digest):
            report(pulling(layer.digest, layer.size, layer.size))
            return
        try:
            async with self._claim(layer.digest):
                if self.store.has_blob(layer.digest):
                    report(pulling(layer.digest, layer.size, layer.size))
                    return
                await self._resume_download(session, url, layer, semaphore, report)
        except OSError as exc:  # the disk, not the network (that is retried in _fetch_part)
            raise _disk_error(layer.digest, exc) from None

    async def _resume_download(self, session: aiohttp.ClientSession, url: str, layer: Layer,
                               semaphore: asyncio.Semaphore, report: Progress) -> None:
        data_path, state_path = self._paths(layer.digest)
        plan = plan_parts(layer.size, self.config.pull_parts, self.min_part, self.max_part)
        saved = _read_or_none(state_path) if data_path.exists() else None
        blob = PartialBlob.resume(layer.digest, layer.size, plan, saved)
        if blob.completed:
            log.info("resuming %s: %d of %d bytes kept", layer.digest, blob.completed, layer.size)
        fd = os.open(data_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not blob.completed:
                os.ftruncate(fd, 0)
            os.ftruncate(fd, layer.size)
            await self._fetch_parts(session, url, fd, blob, state_path, semaphore, report)
        finally:
            try:
                _checkpoint(fd, blob, state_path)
            except OSError as exc:  # the last saved state stays: it never overcounts
                log.warning("cannot record the progress of %s: %s", layer.digest, exc)
            os.close(fd)

    async def _fetch_parts(self, session: aiohttp.ClientSession, url: str, fd: int,
                           blob: PartialBlob, state_path: Path, semaphore: asyncio.Semaphore,
                           report: Progress) -> None:
        meter = _Meter(blob, report, self.progress_interval)
        meter.emit()

        async def one(part: Part) -> None:
            async with semaphore:
                try:
                    await self._fetch_part(session, url, fd, blob.digest, part, meter)
                except OSError as exc:  # writing the part failed (network errors are retried)
                    raise _disk_error(blob.digest, exc) from None

        async def checkpoints() -> None:
            while True:
                await asyncio.sleep(self.checkpoint_s)
                try:
                    await asyncio.to_thread(_checkpoint, fd, blob, state_path)
                except OSError as exc:
                    log.warning("cannot record the progress of %s: %s", blob.digest, exc)

        ticker = asyncio.create_task(checkpoints())
        try:
            async with asyncio.TaskGroup() as tg:
                for part in blob.parts:
                    if part.done < part.length:
                        tg.create_task(one(part))
        except* OllamaMaxError as group:
            raise group.exceptions[0] from None
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        meter.emit()

    async def _fetch_part(self, session: aiohttp.ClientSession, url: str, fd: int, digest: str,
                          part: Part, meter: _Meter) -> None:
        failures = 0
        while part.done < part.length:
            before = part.done
            try:
                await self._get_range(session, url, fd, digest, part, meter)
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                failures = 0 if part.done > before else failures + 1
                reason = _describe(exc)
                if failures > self.retries:
                    raise PullError(f"pulling {digest[7:19]}: no progress after {self.retries} "
                                    f"retries: {reason}") from None
                log.info("pulling %s: bytes %d-%d: %s; retrying from %d", digest[7:19],
                         part.start, part.end - 1, reason, part.start + part.done)
                await asyncio.sleep(self.backoff * failures)

    async def _get_range(self, session: aiohttp.ClientSession, url: str, fd: int, digest: str,
                         part: Part, meter: _Meter) -> None:
        start = part.start + part.done
        headers = {"Range": f"bytes={start}-{part.end - 1}"}
        async with session.get(url, headers=headers) as resp:
            if resp.status == 404:
                raise PullError(f"pulling {digest[7:19]}: the registry has no such blob")
            if resp.status != 206 or not _range_starts_at(resp.headers.get("Content-Range"), start):
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                                  message=f"HTTP {resp.status} to a range request")
            async for chunk in resp.content.iter_any():
                take = min(len(chunk), part.length - part.done)
                os.pwrite(fd, chunk[:take] if take < len(chunk) else chunk, part.start + part.done)
                part.done += take
                meter.add()
                if part.done >= part.length:
                    break
        if part.done < part.length:
            raise ConnectionError("the registry ended the answer early")

    async def _adopt(self, layer: Layer) -> None:
        """Verify a downloaded blob and move it into the store (deleted if it is wrong)."""
        if self.store.has_blob(layer.digest):
            return
        data_path, state_path = self._paths(layer.digest)
        try:
            async with self._claim(layer.digest):
                if self.store.has_blob(layer.digest):
                    return
                if layer.size == 0:
                    data_path.touch()
                try:
                    await asyncio.to_thread(self.store.adopt_blob, data_path, layer.digest)
                except BadRequest as exc:
                    state_path.unlink(missing_ok=True)
                    raise PullError(f"{exc.message}: the registry sent a corrupt blob; "
                                    "it was deleted, pull again") from None
                state_path.unlink(missing_ok=True)
                data_path.with_suffix(".lock").unlink(missing_ok=True)
        except OSError as exc:
            raise _disk_error(layer.digest, exc) from None


class _Meter:
    """Turns bytes arriving for one blob into progress events, at most one per interval."""

    def __init__(self, blob: PartialBlob, report: Progress, interval: float) -> None:
        self.blob = blob
        self.report = report
        self.interval = interval
        self.last = 0.0

    def add(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.emit()

    def emit(self) -> None:
        self.last = time.monotonic()
        self.report(pulling(self.blob.digest, self.blob.size, self.blob.completed))


def _disk_error(digest: str, exc: OSError) -> PullError:
    where = f" {exc.filename}" if exc.filename else ""
    return PullError(f"pulling {digest[7:19]}: cannot write{where}: {exc.strerror or exc}")


def _checkpoint(fd: int, blob: PartialBlob, state_path: Path) -> None:
    """Record the parts' progress: counts taken first, data fsynced, then the sidecar written
    atomically, so it never counts a byte that is not on disk."""
    state = blob.to_json()
    os.fdatasync(fd)
    # a name per thread: a periodic checkpoint may still run when the final one starts
    tmp = state_path.with_name(f"{state_path.name}.{threading.get_ident()}.tmp")
    with tmp.open("wb") as out:
        out.write(state)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, state_path)


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _range_starts_at(content_range: str | None, start: int) -> bool:
    """``bytes 100-199/1000`` starts at 100."""
    if not content_range or not content_range.startswith("bytes "):
        return False
    first, _, _ = content_range[6:].partition("-")
    return first.strip() == str(start)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "stalled (no data within the stall timeout)"
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.message or f"HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
