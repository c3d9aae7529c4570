"""W-TinyLFU bounded in bytes: the memory tier's admission and eviction policy (pure).

Plain LRU loses a hot entry to any scan of one-hit wonders longer than the cache. W-TinyLFU
(Einziger, Friedman, Manes: "TinyLFU: A Highly Efficient Cache Admission Policy", the policy
of Caffeine) keeps recency and frequency apart:

- a small *window* LRU (1% of the bytes) takes every new entry, so a burst of fresh keys is
  served without being admitted to the main area;
- the *main* area is a segmented LRU: *probation* (20%) for entries seen once there and
  *protected* (80%) for entries hit again;
- when the window overflows, its oldest entry is a *candidate*: it enters the main area only
  if a frequency sketch says it was asked for more often than the probation entry it would
  push out (the *victim*); otherwise the candidate is dropped;
- the sketch is a count-min sketch of 4-bit counters behind a *doorkeeper* (a set that
  absorbs the first occurrence of every key, so one-hit wonders never reach the counters);
  every `sample` additions all counters are halved and the doorkeeper is cleared, so old
  popularity fades.

Sizes are bytes, not entries: an entry larger than the whole cache is refused, and a byte
budget is enforced by evicting as many victims as the candidate needs. No clock and no I/O;
keys are any hashable values (the tier uses the cache key's bytes).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

_SEEDS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5)
_MASK64 = (1 << 64) - 1


class FrequencySketch:
    """A count-min sketch of 4-bit counters with a doorkeeper and periodic halving."""

    __slots__ = ("_additions", "_door", "_mask", "_rows", "sample")

    def __init__(self, width: int = 4096, sample: int | None = None) -> None:
        width = 1 << max(4, (max(16, width) - 1).bit_length())  # a power of two
        self._mask = width - 1
        self._rows = [bytearray(width) for _ in _SEEDS]
        self._door: set[int] = set()
        self._additions = 0
        self.sample = sample or width * 10  # Caffeine's reset period: 10 x the width

    def _slots(self, key: Hashable) -> list[int]:
        h = hash(key) & _MASK64
        return [((h * seed) >> 17) & self._mask for seed in _SEEDS]

    def increment(self, key: Hashable) -> None:
        h = hash(key)
        if h not in self._door:
            self._door.add(h)  # the first sighting only passes the doorkeeper
        else:
            for row, slot in zip(self._rows, self._slots(key), strict=True):
                if row[slot] < 15:
                    row[slot] += 1
        self._additions += 1
        if self._additions >= self.sample:
            self._age()

    def estimate(self, key: Hashable) -> int:
        seen = 1 if hash(key) in self._door else 0
        return seen + min(row[slot] for row, slot in zip(self._rows, self._slots(key), strict=True))

    def _age(self) -> None:
        """Halve every counter and forget the doorkeeper: popularity is recent popularity."""
        for row in self._rows:
            row[:] = bytes(c >> 1 for c in row)
        self._door.clear()
        self._additions //= 2


class WTinyLFU:
    """A byte-bounded map with W-TinyLFU admission and eviction; see the module docstring.

    `put` and `pop` return the keys that left the cache (evicted or refused) so the caller
    can keep its own indexes in step; `get` counts frequency and promotes.
    """

    def __init__(self, max_bytes: int, *, window: float = 0.01, protected: float = 0.8,
                 sketch_width: int | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        self.max_bytes = max_bytes
        self.window_max = max(1, int(max_bytes * window))
        main = max_bytes - self.window_max
        self.protected_max = int(main * protected)
        # sketch width: about one counter per average entry of a few KB, at least 4096
        self.sketch = FrequencySketch(sketch_width or max(4096, min(1 << 20, max_bytes >> 12)))
        self._window: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._probation: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._protected: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.window_bytes = self.probation_bytes = self.protected_bytes = 0

    @property
    def bytes(self) -> int:
        return self.window_bytes + self.probation_bytes + self.protected_bytes

    def __len__(self) -> int:
        return len(self._window) + len(self._probation) + len(self._protected)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._window or key in self._probation or key in self._protected

    def get(self, key: Hashable) -> Any | None:
        """The value, or None; either way the key's frequency counts one more."""
        self.sketch.increment(key)
        if key in self._window:
            self._window.move_to_end(key)
            return self._window[key][0]
        if key in self._protected:
            self._protected.move_to_end(key)
            return self._protected[key][0]
        entry = self._probation.pop(key, None)
        if entry is None:
            return None
        self.probation_bytes -= entry[1]
        self._protected[key] = entry  # hit again in probation: protected
        self.protected_bytes += entry[1]
        self._demote_protected()
        return entry[0]

    def put(self, key: Hashable, value: Any, size: int) -> list[Hashable]:
        """Store `value` of `size` bytes; returns the keys that left (maybe `key` itself)."""
        self.pop(key)  # replacing a value is not an eviction
        if size > self.max_bytes or size < 0:
            return [key]
        self.sketch.increment(key)
        self._window[key] = (value, size)
        self.window_bytes += size
        left: list[Hashable] = []
        # an entry larger than the window goes straight on to ask for a place in the main area
        while self.window_bytes > self.window_max:
            candidate, entry = self._window.popitem(last=False)
            self.window_bytes -= entry[1]
            left.extend(self._admit(candidate, entry))
        return left

    def pop(self, key: Hashable) -> Any | None:
        """Remove `key` (invalidation); its value, or None if it was not here."""
        for area in (self._window, self._probation, self._protected):
            entry = area.pop(key, None)
            if entry is not None:
                self._account(area, -entry[1])
                return entry[0]
        return None

    def clear(self) -> None:
        for area in (self._window, self._probation, self._protected):
            area.clear()
        self.window_bytes = self.probation_bytes = self.protected_bytes = 0

    # -- internals -------------------------------------------------------------------------

    def _admit(self, candidate: Hashable, entry: tuple[Any, int]) -> list[Hashable]:
        """The window's oldest entry asks for a place in the main area: it gets one if it is
        more frequent than every victim it would push out; else it is the one that leaves."""
        size = entry[1]
        need = self.bytes + size - self.max_bytes
        if need > 0:
            freq = self.sketch.estimate(candidate)
            victims: list[Hashable] = []
            freed = 0
            for victim, (_, vsize) in self._main_lru_order():
                if freed >= need:
                    break
                if self.sketch.estimate(victim) >= freq:
                    return [candidate]  # the incumbents are more popular: refuse
                victims.append(victim)
                freed += vsize
            if freed < need:
                return [candidate]
            for victim in victims:
                self.pop(victim)
        else:
            victims = []
        self._probation[candidate] = entry
        self.probation_bytes += size
        return victims

    def _main_lru_order(self) -> Any:
        """Main-area entries from the first to evict: probation's oldest, then protected's."""
        yield from self._probation.items()
        yield from self._protected.items()

    def _demote_protected(self) -> None:
        """Protected over its share: its oldest go back to probation (most recent end)."""
        while self.protected_bytes > self.protected_max and len(self._protected) > 1:
            key, entry = self._protected.popitem(last=False)
            self.protected_bytes -= entry[1]
            self._probation[key] = entry
            self.probation_bytes += entry[1]

    def _account(self, area: OrderedDict[Hashable, tuple[Any, int]], delta: int) -> None:
        if area is self._window:
            self.window_bytes += delta
        elif area is self._probation:
            self.probation_bytes += delta
        else:
            self.protected_bytes += delta
