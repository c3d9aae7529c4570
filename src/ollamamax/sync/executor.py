"""The node's side of placement: publish what it holds, run the planner's assignments.

Version records: at start and after every change (a scan of the store every
``sync.scan_interval`` seconds notices imports and pulls by other processes too), the node
puts one record per model under its lease (``sync/versions/<model>/<node>``) and deletes the
records of models it no longer holds. A model's time and origin are remembered in
``<store>/.ollamamax/sync-versions.json`` together with the clock's last value, so they
survive restarts (`LocalVersions`); a model found in the store with no remembered version is
dated by its manifest's modification time when it predates this process (an old copy does
not become "newest" by restarting) and by the clock otherwise.

Assignments (``sync/assign/<node>/<model>``, from the planner): for each, every blob of the
manifest that the store lacks is fetched with ``Fetcher.fetch(digest, size)`` (verified,
resumable, ``sync/transfer.py``); only then is the manifest written (its exact text, checked
against the digest), so a losing version is replaced only once the winner is complete and
nothing is ever deleted on the way. Then the version record is published with the winner's
time and origin, the assignment removed, and, for the ``ollama`` engine, the model installed
into the Ollama behind the node (``sync/install.py``). Assignments of several models run at
once, up to ``sync.parallel_assignments``; a withdrawn assignment is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from ollamamax.cluster.store import EventType, Store
from ollamamax.errors import BadRequest, Compacted, LeaseNotFound, OllamaMaxError, StoreError
from ollamamax.models.store import ModelStore
from ollamamax.sync.chunks import write_atomic
from ollamamax.sync.desired import SyncKeys, quote
from ollamamax.sync.hlc import HLC, ZERO, HybridClock
from ollamamax.sync.planner import Assignment, decode_assignment
from ollamamax.sync.resolve import VersionRecord, decode_record, manifest_digest

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
RETRY_S = 1.0
MAX_RETRY_S = 30.0  # a failing assignment is tried again at most this far apart
STATE_FILE = "sync-versions.json"


class BlobFetcher(Protocol):
    """What the executor needs of ``ollamamax.sync.transfer.Fetcher``."""

    async def fetch(self, digest: str, size: int, on_progress: Any = None) -> None: ...


class Installer(Protocol):
    async def install(self, store: ModelStore, name: str) -> str: ...


# -- local versions (pure but for the file) ---------------------------------------------------


class _Known(msgspec.Struct, frozen=True):
    digest: str
    origin: str
    hlc: tuple[int, int, str]


class _State(msgspec.Struct):
    hlc: tuple[int, int, str] = (0, 0, "")
    models: dict[str, _Known] = {}


@dataclass(frozen=True, slots=True)
class Held:
    """A model in the local store: its key, manifest digest and text, manifest mtime."""

    model: str
    digest: str
    manifest: str
    mtime_ms: int


def scan(store: ModelStore) -> list[Held]:
    """Every model in `store` with its exact manifest text."""
    out = []
    for model in store.list():
        path = store.manifests.joinpath(*model.name.manifest_parts)
        try:
            raw = path.read_bytes()
            mtime = path.stat().st_mtime_ns // 1_000_000
        except OSError:
            continue
        out.append(Held(model.name.key, manifest_digest(raw), raw.decode(), mtime))
    return out


def date_versions(held: list[Held], known: dict[str, _Known], clock: HybridClock,
                  started_ms: int) -> dict[str, VersionRecord]:
    """The version record of every held model; `known` is updated with new ones."""
    out = {}
    for h in sorted(held, key=lambda h: h.model):
        k = known.get(h.model)
        if k is None or k.digest != h.digest:
            if h.mtime_ms < started_ms:  # found at start: as old as its file
                t = HLC(h.mtime_ms, 0, clock.node)
                clock.observe(t)
            else:  # made while we run: a local event
                t = clock.now()
            k = known[h.model] = _Known(h.digest, clock.node, tuple(t))
        out[h.model] = VersionRecord(digest=h.digest, manifest=h.manifest, origin=k.origin,
                                     hlc=k.hlc)
    for gone in set(known) - set(out):
        del known[gone]
    return out


class LocalVersions:
    """The remembered versions and clock of one store (``.ollamamax/sync-versions.json``)."""

    def __init__(self, store: ModelStore, node_id: str, wall: Callable[[], int] | None = None
                 ) -> None:
        self.path = store.root / ".ollamamax" / STATE_FILE
        state = self._load()
        last = HLC(*state.hlc) if state.hlc[2] else ZERO
        self.clock = HybridClock(node_id, last, wall) if wall else HybridClock(node_id, last)
        self.known: dict[str, _Known] = dict(state.models)

    def _load(self) -> _State:
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=_State)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return _State()

    def adopt(self, model: str, record: VersionRecord) -> None:
        """`model` now holds `record`'s version (copied by sync: its time and origin stay)."""
        self.clock.observe(record.time)
        self.known[model] = _Known(record.digest, record.origin, record.hlc)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, msgspec.json.encode(_State(tuple(self.clock.last), self.known)))


def write_manifest_text(store: ModelStore, model: str, text: str, digest: str) -> None:
    """Write a manifest with its exact text (its digest is the hash of those bytes), only
    once every blob it names is in the store. `BadRequest` otherwise."""
    raw = text.encode()
    if manifest_digest(raw) != digest:
        raise BadRequest(f"manifest of {model} does not hash to {digest}")
    store.write_manifest_bytes(model, raw)


# -- the executor ------------------------------------------------------------------------------


class Executor:
    def __init__(self, store: ModelStore, kv: Store, node_id: str, fetcher: BlobFetcher, *,
                 lease: Callable[[], int], prefix: str, installer: Installer | None = None,
                 scan_interval: float = 2.0, parallel: int = 2,
                 on_publish: Callable[[list[VersionRecord]], Awaitable[None]] | None = None,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.store, self.kv, self.node_id, self.fetcher = store, kv, node_id, fetcher
        self.keys = SyncKeys(prefix)
        self.lease, self.installer, self.scan_interval = lease, installer, scan_interval
        self.on_publish = on_publish
        self.versions = LocalVersions(store, node_id)
        self.started_ms = time.time_ns() // 1_000_000
        self._sleep = sleep
        self._slots = asyncio.Semaphore(parallel)
        self._published: dict[str, VersionRecord] = {}
        self._published_lease = 0
        self._running: dict[str, tuple[str, asyncio.Task[None]]] = {}  # model -> (digest, task)
        self._committed: set[str] = set()  # models whose manifest is written: not cancelled
        self._scanning = asyncio.Lock()  # a scan and a manifest written by sync, one at a time
        self._publishing = asyncio.Lock()  # one publication at a time: `_published` stays true
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self.done: list[str] = []  # sentences of finished assignments (tests, logs)

    async def start(self) -> None:
        await self.publish()
        self._tasks = [asyncio.create_task(self._scan_loop(), name="sync-scan"),
                       asyncio.create_task(self._assign_loop(), name="sync-assign")]

    async def stop(self) -> None:
        tasks = self._tasks + [task for _, task in self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks, self._running = [], {}

    # -- version records -----------------------------------------------------------------

    async def publish(self) -> str:
        """Put changed version records under the node's lease, delete gone ones; a sentence."""
        async with self._publishing:
            return await self._publish()

    async def _publish(self) -> str:
        async with self._scanning:
            held = await asyncio.to_thread(scan, self.store)
            await self._observe_others(held)
            records = date_versions(held, self.versions.known, self.versions.clock,
                                    self.started_ms)
        lease = self.lease()
        if not lease:
            return "no lease: version records wait for the node to register again"
        if lease != self._published_lease:
            self._published = {}  # the old lease took them: everything again
        put = {m: r for m, r in records.items() if self._published.get(m) != r}
        gone = [m for m in self._published if m not in records]
        for model, record in put.items():
            await self.kv.put(self.keys.version(model, self.node_id),
                              msgspec.json.encode(record), lease)
        for model in gone:
            await self.kv.delete(self.keys.version(model, self.node_id))
        self._published = dict(records)
        self._published_lease = lease
        if put or gone:
            await asyncio.to_thread(self.versions.save)
            if self.on_publish is not None and put:
                await self.on_publish(list(put.values()))
            return f"published {len(put)} version record(s), withdrew {len(gone)}"
        return "version records up to date"

    async def _observe_others(self, held: list[Held]) -> None:
        """Before dating a new local version, see the other nodes' times for that model, so
        a re-pull made after seeing another version is ordered after it."""
        known = self.versions.known
        for h in held:
            if h.model in known and known[h.model].digest == h.digest:
                continue
            with contextlib.suppress(StoreError):
                items, _ = await self.kv.get_prefix(f"{self.keys.versions_prefix}"
                                                    f"{quote(h.model)}/")
                for item in items:
                    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                        self.versions.clock.observe(decode_record(item.value).time)

    async def _scan_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.scan_interval):
                    await self._changed.wait()
            self._changed.clear()
            try:
                sentence = await self.publish()
            except (StoreError, OSError) as exc:
                log.debug("%s: publishing version records failed (%s)", self.node_id, exc)
                continue
            if not sentence.endswith("up to date"):
                log.info("%s: %s", self.node_id, sentence)

    # -- assignments ---------------------------------------------------------------------

    async def _assign_loop(self) -> None:
        prefix = self.keys.node_assignments(self.node_id)
        while True:
            try:
                items, revision = await self.kv.get_prefix(prefix)
                for item in items:
                    self._on_put(item.key, item.value)
                async with contextlib.aclosing(
                        self.kv.watch_prefix(prefix, revision + 1)) as events:
                    async for event in events:
                        if event.type is EventType.PUT:
                            self._on_put(event.key, event.value)
                        else:
                            self._on_delete(event.key)
            except Compacted:
                continue
            except StoreError as exc:
                log.debug("%s: assignment watch failed (%s); retrying", self.node_id, exc)
                await self._sleep(RETRY_S)

    def _model_of(self, key: str) -> str | None:
        parts = self.keys.split(key, self.keys.assign_prefix)
        return parts[1] if parts is not None and parts[0] == self.node_id else None

    def _on_put(self, key: str, value: bytes) -> None:
        model = self._model_of(key)
        try:
            assignment = decode_assignment(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("%s: ignoring an unreadable assignment at %s", self.node_id, key)
            return
        if model is None:
            return
        running = self._running.get(model)
        if running is not None:
            if running[0] == assignment.digest:
                return
            running[1].cancel()  # the planner changed its mind: the newer order runs
        task = asyncio.create_task(self._run(model, key, assignment), name=f"sync-{model}")
        self._running[model] = (assignment.digest, task)

    def _on_delete(self, key: str) -> None:
        model = self._model_of(key)
        running = self._running.get(model or "")
        if model is None or running is None or running[1].done() or model in self._committed:
            return  # a committed one (the manifest is in place) finishes: it only installs
        running[1].cancel()
        log.info("%s: assignment of %s withdrawn", self.node_id, model)

    async def _run(self, model: str, key: str, assignment: Assignment, failures: int = 0
                   ) -> None:
        try:
            async with self._slots:
                sentence = await self.execute(model, assignment)
                self._committed.add(model)
            await self._remove(key, assignment.digest)
            self.done.append(sentence)
            log.info("%s: %s", self.node_id, sentence)
            await self._install(model)
        except asyncio.CancelledError:
            raise
        except (OllamaMaxError, OSError) as exc:
            pause = min(RETRY_S * 2 ** failures, MAX_RETRY_S)
            log.warning("%s: assignment of %s failed: %s; retrying in %g s", self.node_id,
                        model, exc, pause)
            await self._sleep(pause)
            self._retry(model, key, assignment, failures + 1)
        except Exception:
            log.exception("unexpected error running the assignment of %s", model)
        finally:
            current = self._running.get(model)
            if current is not None and current[1] is asyncio.current_task():
                del self._running[model]
                self._committed.discard(model)

    async def _install(self, model: str, attempts: int = 3) -> None:
        """Into the Ollama behind the node (``ollama`` engine), retried: it is idempotent."""
        for attempt in range(1, attempts + 1):
            if self.installer is None:
                return
            try:
                log.info("%s: %s", self.node_id, await self.installer.install(self.store, model))
                return
            except (OllamaMaxError, OSError) as exc:
                log.warning("%s: installing %s failed (attempt %d of %d): %s", self.node_id,
                            model, attempt, attempts, exc)
                await self._sleep(RETRY_S * attempt)

    def _retry(self, model: str, key: str, assignment: Assignment, failures: int) -> None:
        task = asyncio.create_task(self._run(model, key, assignment, failures),
                                   name=f"sync-{model}")
        self._running[model] = (assignment.digest, task)

    async def execute(self, model: str, assignment: Assignment) -> str:
        """Fetch what the store lacks, write the manifest, publish the version; a sentence."""
        record = assignment.record()
        if not record.valid():
            raise BadRequest(f"assignment of {model}: manifest does not hash to {record.digest}")
        fetched = 0
        for digest, size in record.blobs():
            if not self.store.has_blob(digest):
                await self.fetcher.fetch(digest, size)
                fetched += size
        async with self._scanning:  # a scan in between would date the new manifest as ours
            await asyncio.to_thread(write_manifest_text, self.store, model, record.manifest,
                                    record.digest)
            self.versions.adopt(model, record)
            await asyncio.to_thread(self.versions.save)
        await self.publish()
        return f"holds {model} ({record.digest[7:19]}) after fetching {fetched} bytes"

    async def _remove(self, key: str, digest: str) -> None:
        """Delete the assignment if it is still this one (the planner may have put another)."""
        with contextlib.suppress(StoreError, LeaseNotFound):
            item = await self.kv.get(key)
            if item is not None and decode_assignment(item.value).digest == digest:
                await self.kv.delete(key)

    def poke(self) -> None:
        """The store may have changed: scan now."""
        self._changed.set()

    @property
    def running(self) -> list[str]:
        return sorted(self._running)
