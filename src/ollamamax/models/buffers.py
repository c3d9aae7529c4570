"""Buffers for moving blob bytes (a transfer reads a chunk into one, then writes it out).

Two implementations behind one interface, chosen by name (flag ``models.buffers``):

- ``pool`` (default): the catalogue's "buffer pools": up to `keep` chunk buffers reused, so a
  transfer allocates nothing after its first chunks (a released buffer is not cleared:
  readers fill it, and only the bytes they report read are used).
- ``fresh``: the catalogue's "before": a new zeroed ``bytearray`` per chunk.

`acquire()` returns a buffer of exactly `chunk` bytes; give it back with `release` (and hold
no view of it after). Measured (docs/benchmarks.md): a 1 MiB chunk filled from memory takes
about 30 us pooled against 47 us fresh, where the kernel must fault in the zero pages that
CPython's calloc asked for; at 64 KiB the two are equal.
"""

from __future__ import annotations


class FreshBuffers:
    def __init__(self, chunk: int = 1 << 20, keep: int = 0) -> None:
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        self.chunk = chunk
        self.allocated = 0

    def acquire(self) -> bytearray:
        self.allocated += 1
        return bytearray(self.chunk)

    def release(self, buf: bytearray) -> None:
        """Nothing to do: the buffer is freed when no one holds it."""


class BufferPool:
    def __init__(self, chunk: int = 1 << 20, keep: int = 16) -> None:
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        self.chunk = chunk
        self.keep = keep
        self.allocated = 0
        self._free: list[bytearray] = []

    def acquire(self) -> bytearray:
        if self._free:
            return self._free.pop()
        self.allocated += 1
        return bytearray(self.chunk)

    def release(self, buf: bytearray) -> None:
        if len(buf) == self.chunk and len(self._free) < self.keep:
            self._free.append(buf)


BUFFERS = {
    "fresh": "ollamamax.models.buffers:FreshBuffers",
    "pool": "ollamamax.models.buffers:BufferPool",
}
