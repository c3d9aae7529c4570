"""Chunk-hash lists of blobs, their sidecar cache, and the partial file a transfer fills.

A blob of `size` bytes is cut into chunks of `chunk_size` (the last one shorter); its chunk
list holds the sha256 of every chunk and a *root*, the sha256 of the concatenated 32-byte
chunk digests. The list is stored under the blob's digest (etcd ``sync/chunks/<digest>``), so
a receiver can check each chunk the moment it arrives and refetch a bad one elsewhere, long
before the whole blob can be hashed. The blob digest stays the authority: the finished file is
hashed again as a whole before it enters the store, so a forged chunk list can waste a
transfer, never put a wrong blob in the store.

Lists are computed once per blob and chunk size and cached beside the store, outside
``blobs/``, as ``<root>/.ollamamax/chunks/<hex>.<chunk_size>.json``.

`PartialFile` is a blob being downloaded: ``<root>/.ollamamax/transfers/<hex>/`` holds the
chunk list (``list.json``), the data preallocated to the blob's size (``data``, written at
each chunk's offset) and one byte per chunk (``have``). A chunk's byte is set only after its
data is verified and fsynced (in batches: `flush`), so after a crash (even ``kill -9``) the
transfer resumes with the chunks whose byte is set and fetches only the others.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

import msgspec

from ollamamax.models.store import ModelStore, check_digest

READ_PIECE = 1 << 20
MEMO = 256  # chunk lists a ChunkIndex keeps in memory


class ChunkList(msgspec.Struct, frozen=True):
    """A blob's chunk hashes; `root` ties them together (see the module docstring)."""

    size: int
    chunk_size: int
    hashes: list[str]
    root: str

    @property
    def count(self) -> int:
        return len(self.hashes)

    def span(self, index: int) -> tuple[int, int]:
        """Byte range ``[start, end)`` of chunk `index`."""
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.size)

    def length(self, index: int) -> int:
        start, end = self.span(index)
        return end - start

    def matches(self, index: int, data: bytes | bytearray | memoryview) -> bool:
        return len(data) == self.length(index) and hashlib.sha256(data).hexdigest() == self.hashes[index]

    def check(self) -> ChunkList:
        """This list, if it is consistent (count, hex digests, root); ValueError otherwise."""
        if self.size < 0 or self.chunk_size < 1:
            raise ValueError("a chunk list needs size >= 0 and chunk_size >= 1")
        if len(self.hashes) != chunk_count(self.size, self.chunk_size):
            raise ValueError(f"{len(self.hashes)} chunk hashes for {self.size} bytes in chunks "
                             f"of {self.chunk_size}")
        for h in self.hashes:
            if not isinstance(h, str) or len(h) != 64 or h.strip("0123456789abcdef"):
                raise ValueError(f"not a sha256 hex digest: {h!r}")
        if root_of(self.hashes) != self.root:
            raise ValueError("the chunk list's root does not match its hashes")
        return self

    def encode(self) -> bytes:
        return msgspec.json.encode(self)


def decode(raw: bytes | str) -> ChunkList:
    """A chunk list from JSON, checked; ValueError if malformed or inconsistent."""
    try:
        chunk_list = msgspec.json.decode(raw, type=ChunkList)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a chunk list: {exc}") from None
    return chunk_list.check()


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size) if size else 0


def root_of(hashes: Iterable[str]) -> str:
    return hashlib.sha256(b"".join(bytes.fromhex(h) for h in hashes)).hexdigest()


def make(hashes: list[str], size: int, chunk_size: int) -> ChunkList:
    return ChunkList(size, chunk_size, hashes, root_of(hashes))


def hash_file(path: Path, chunk_size: int) -> ChunkList:
    """The chunk list of the file at `path` (blocking: run it in a thread)."""
    hashes = []
    size = 0
    with path.open("rb", buffering=0) as f:
        while True:
            digest = hashlib.sha256()
            taken = 0
            while taken < chunk_size and (piece := f.read(min(READ_PIECE, chunk_size - taken))):
                digest.update(piece)
                taken += len(piece)
            if not taken:
                break
            hashes.append(digest.hexdigest())
            size += taken
    return make(hashes, size, chunk_size)


def encode_have(have: bytes | bytearray) -> str:
    """A bitmap (one byte per chunk, 0 or 1) as the base64 of its bits, first chunk in the
    highest bit of the first byte: what ``/chunks`` answers as ``have``."""
    bits = bytearray(-(-len(have) // 8))
    for i, flag in enumerate(have):
        if flag:
            bits[i >> 3] |= 0x80 >> (i & 7)
    return base64.b64encode(bytes(bits)).decode()


def decode_have(value: str | list[int], count: int) -> bytearray:
    """The inverse of `encode_have`; a list of chunk indexes is accepted too."""
    have = bytearray(count)
    if isinstance(value, list):
        for i in value:
            if isinstance(i, int) and 0 <= i < count:
                have[i] = 1
        return have
    bits = base64.b64decode(value, validate=True)
    for i in range(min(count, len(bits) * 8)):
        have[i] = (bits[i >> 3] >> (7 - (i & 7))) & 1
    return have


def sync_dir(store: ModelStore) -> Path:
    """Where sync keeps its own files in a store: beside ``blobs/``, never inside it."""
    return store.root / ".ollamamax"


class ChunkIndex:
    """Chunk lists of a store's complete blobs, computed once and cached in sidecars."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.dir = sync_dir(store) / "chunks"
        self._memo: dict[tuple[str, int], ChunkList] = {}  # peers poll /chunks often

    def get(self, digest: str, chunk_size: int) -> ChunkList:
        """The list of a blob the store holds (blocking: hashes it on a cache miss).
        FileNotFoundError if the store does not hold it."""
        hex_ = check_digest(digest)
        blob = self.store.blob_path(digest)
        size = blob.stat().st_size
        memo = self._memo.get((hex_, chunk_size))
        if memo is not None and memo.size == size:
            return memo
        sidecar = self.dir / f"{hex_}.{chunk_size}.json"
        try:
            chunk_list = decode(sidecar.read_bytes())
            if chunk_list.size != size or chunk_list.chunk_size != chunk_size:
                raise ValueError("a stale sidecar")
        except (OSError, ValueError):
            chunk_list = hash_file(blob, chunk_size)
            self.put(hex_, chunk_list)
        if len(self._memo) >= MEMO:
            self._memo.clear()
        self._memo[(hex_, chunk_size)] = chunk_list
        return chunk_list

    def peek(self, digest: str, chunk_size: int) -> ChunkList | None:
        """The list if it is in memory (no hashing, no file read), else None."""
        return self._memo.get((check_digest(digest), chunk_size))

    def put(self, hex_: str, chunk_list: ChunkList) -> None:
        """Cache a list known to be right (a transfer verified the whole blob against it)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / f"{hex_}.{chunk_list.chunk_size}.json", chunk_list.encode())


class PartialFile:
    """A blob being downloaded, on disk; see the module docstring. Blocking methods: call
    them from a thread when the chunk is large."""

    def __init__(self, store: ModelStore, digest: str, chunk_list: ChunkList) -> None:
        self.digest, self.hex = digest, check_digest(digest)
        self.chunks = chunk_list
        self.dir = sync_dir(store) / "transfers" / self.hex
        self.data_path = self.dir / "data"
        self.have = bytearray(chunk_list.count)
        self._fd = -1
        self._have_fd = -1
        self.moved_to: Path | None = None  # the blob in the store, once committed
        self._whole = hashlib.sha256()
        self._hashed = 0  # chunks fed into _whole, in order
        self._hash_lock = threading.Lock()
        self._pending: list[int] = []  # written, not yet durable
        self._pending_lock = threading.Lock()
        self.pending_bytes = 0

    @classmethod
    def saved_list(cls, store: ModelStore, digest: str) -> ChunkList | None:
        """The chunk list an interrupted transfer of `digest` left, if any."""
        path = sync_dir(store) / "transfers" / check_digest(digest) / "list.json"
        try:
            return decode(path.read_bytes())
        except (OSError, ValueError):
            return None

    def open(self) -> int:
        """Create or reopen the files; keep the chunks a previous run completed that still
        verify. Returns how many chunks are already here."""
        self.dir.mkdir(parents=True, exist_ok=True)
        saved = self.saved_list_here()
        if saved != self.chunks:  # another list (or none): start over
            for name in ("data", "have"):
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / name).unlink()
            write_atomic(self.dir / "list.json", self.chunks.encode())
        self._fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size != self.chunks.size:
            os.ftruncate(self._fd, self.chunks.size)
            if self.chunks.size:
                with contextlib.suppress(OSError):  # not every filesystem can preallocate
                    os.posix_fallocate(self._fd, 0, self.chunks.size)
        self._have_fd = os.open(self.dir / "have", os.O_RDWR | os.O_CREAT, 0o644)
        marks = os.pread(self._have_fd, self.chunks.count, 0).ljust(self.chunks.count, b"\0")
        for i, mark in enumerate(marks):
            self.have[i] = 1 if mark == 1 and self._verify(i) else 0
        return sum(self.have)

    def saved_list_here(self) -> ChunkList | None:
        try:
            return decode((self.dir / "list.json").read_bytes())
        except (OSError, ValueError):
            return None

    def _verify(self, index: int) -> bool:
        start, end = self.chunks.span(index)
        return self.chunks.matches(index, os.pread(self._fd, end - start, start))

    def write(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """Keep a verified chunk: it can be served at once; it survives a crash after the
        next `flush`."""
        start, _ = self.chunks.span(index)
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, start)
            view, start = view[written:], start + written
        with self._pending_lock:
            self.have[index] = 1
            self._pending.append(index)
            self.pending_bytes += len(data)

    def flush(self) -> int:
        """Make the chunks written since the last flush durable: their data first, then
        their bytes in ``have``, so a byte is never set for data a crash could lose (one
        fdatasync per batch rather than per chunk: the disk, not the network, was the
        limit). Returns how many chunks it recorded."""
        with self._pending_lock:
            pending, self._pending, self.pending_bytes = self._pending, [], 0
        if not pending:
            return 0
        os.fdatasync(self._fd)
        for index in pending:
            os.pwrite(self._have_fd, b"\1", index)
        os.fdatasync(self._have_fd)
        return len(pending)

    def read(self, start: int, length: int) -> bytes:
        """Bytes of verified chunks, for peers; after the file moved into the store (uploads
        may still be running when the transfer ends), from there."""
        if self._fd < 0 and self.moved_to is not None:
            with self.moved_to.open("rb", buffering=0) as f:
                return os.pread(f.fileno(), length, start)
        return os.pread(self._fd, length, start)

    def has_range(self, start: int, end: int) -> bool:
        """Every chunk overlapping ``[start, end)`` is here and verified."""
        if start >= end or end > self.chunks.size:
            return False
        size = self.chunks.chunk_size
        return all(self.have[i] for i in range(start // size, (end - 1) // size + 1))

    @property
    def complete(self) -> bool:
        return all(self.have)

    @property
    def done_bytes(self) -> int:
        return sum(self.chunks.length(i) for i, flag in enumerate(self.have) if flag)

    def hash_along(self, index: int = -1,
                   data: bytes | bytearray | memoryview | None = None) -> str | None:
        """Feed the chunks that are here, in order from the first not yet fed, into the
        whole-blob digest; its hex once every chunk is in (blocking; thread-safe). Called
        after each chunk, so the digest of the whole keeps pace with the download instead
        of costing a second pass at the end. `data`: chunk `index`'s bytes, if at hand."""
        with self._hash_lock:
            count = self.chunks.count
            while self._hashed < count and self.have[self._hashed]:
                if self._hashed == index and data is not None:  # just written: no read back
                    self._whole.update(data)
                else:
                    start, end = self.chunks.span(self._hashed)
                    self._whole.update(os.pread(self._fd, end - start, start))
                self._hashed += 1
            return self._whole.hexdigest() if self._hashed == count else None

    def close(self) -> None:
        for fd in (self._fd, self._have_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._have_fd = -1

    def discard(self) -> None:
        """Remove the partial files (after the blob entered the store, or went bad)."""
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
