"""Bytes each peer moved over the last `window` seconds: what transfer planning reads.

The window is counted in `buckets` slots of ``window / buckets`` seconds: a transfer at time
*t* falls in slot ``floor(t / width)``, and at time *now* the window is the `buckets` slots
ending with the current one. Both implementations below use exactly that definition, so
they agree to the byte (property-tested); time is an argument, never read from a clock.

- ``list``: the catalogue's "before": every transfer kept in a list per peer, and each query
  walks the list (dropping what fell out of the window): O(transfers in the window).
- ``ring`` (default): a ring of per-slot totals per peer: O(1) to record, O(buckets) to read.
"""

from __future__ import annotations

import math


def _slot(t: float, width: float) -> int:
    return math.floor(t / width)


class ListWindow:
    def __init__(self, window: float = 10.0, buckets: int = 10) -> None:
        if window <= 0 or buckets < 1:
            raise ValueError("window must be > 0 and buckets >= 1")
        self.window, self.buckets, self.width = window, buckets, window / buckets
        self.records: dict[str, list[tuple[float, int]]] = {}

    def record(self, peer: str, nbytes: int, now: float) -> None:
        self.records.setdefault(peer, []).append((now, nbytes))

    def bytes(self, peer: str, now: float) -> int:
        """Bytes `peer` moved in the window ending now."""
        current = _slot(now, self.width)
        kept = [(t, n) for t, n in self.records.get(peer, ())
                if _slot(t, self.width) > current - self.buckets]
        self.records[peer] = kept
        return sum(n for t, n in kept if _slot(t, self.width) <= current)

    def rate(self, peer: str, now: float) -> float:
        """Bytes per second over the window."""
        return self.bytes(peer, now) / self.window


class RingWindow:
    def __init__(self, window: float = 10.0, buckets: int = 10) -> None:
        if window <= 0 or buckets < 1:
            raise ValueError("window must be > 0 and buckets >= 1")
        self.window, self.buckets, self.width = window, buckets, window / buckets
        self.totals: dict[str, list[int]] = {}
        self.slots: dict[str, list[int]] = {}  # which slot each ring entry currently counts

    def record(self, peer: str, nbytes: int, now: float) -> None:
        totals = self.totals.get(peer)
        if totals is None:
            totals = self.totals[peer] = [0] * self.buckets
            self.slots[peer] = [-(2**62)] * self.buckets
        slot = _slot(now, self.width)
        k = slot % self.buckets
        slots = self.slots[peer]
        if slots[k] == slot:
            totals[k] += nbytes
        elif slots[k] < slot:  # the entry held an older slot: start over
            slots[k], totals[k] = slot, nbytes
        # else: a transfer older than the ring holds: out of every window still to come

    def bytes(self, peer: str, now: float) -> int:
        totals = self.totals.get(peer)
        if totals is None:
            return 0
        current = _slot(now, self.width)
        low = current - self.buckets
        return sum(total for total, slot in zip(totals, self.slots[peer], strict=True)
                   if low < slot <= current)

    def rate(self, peer: str, now: float) -> float:
        return self.bytes(peer, now) / self.window


BANDWIDTHS = {
    "list": "ollamamax.models.bandwidth:ListWindow",
    "ring": "ollamamax.models.bandwidth:RingWindow",
}
