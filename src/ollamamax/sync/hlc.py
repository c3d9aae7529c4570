"""A hybrid logical clock: version times that order causally and stay close to the wall clock.

A time is ``(wall_ms, logical, node)``. The rules (Kulkarni et al., "Logical Physical Clocks"):

- *send* (a local event: a model imported, pulled or replaced here): the wall part is the
  greater of the last wall part and the wall clock; the logical counter resets when the wall
  part moved, else counts up;
- *receive* (a time seen in another node's version record): the wall part is the greatest of
  the three (ours, theirs, the wall clock), the counter one past the greatest counter among
  those sharing that wall part.

So a version created after a node saw another one is ordered after it even if the node's wall
clock lags, and two times compare as tuples with the node id breaking ties between nodes.
Across restarts the clock stays monotonic given the last value it persisted (`HybridClock`
takes it) or, failing that, a wall clock that did not go back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

WallMs = Callable[[], int]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HLC(NamedTuple):
    wall_ms: int
    logical: int
    node: str

    def to_json(self) -> list[int | str]:
        return [self.wall_ms, self.logical, self.node]

    @classmethod
    def from_json(cls, value: object) -> HLC:
        """`ValueError` for anything but ``[int >= 0, int >= 0, str]``."""
        if (not isinstance(value, list | tuple) or len(value) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                           for v in value[:2]) or not isinstance(value[2], str)):
            raise ValueError(f"not a hybrid logical clock time: {value!r}")
        return cls(int(value[0]), int(value[1]), value[2])


ZERO = HLC(0, 0, "")


def send(last: HLC, now_ms: int, node: str) -> HLC:
    """The time of a local event after `last`, the wall clock reading `now_ms`."""
    if now_ms > last.wall_ms:
        return HLC(now_ms, 0, node)
    return HLC(last.wall_ms, last.logical + 1, node)


def receive(last: HLC, remote: HLC, now_ms: int, node: str) -> HLC:
    """Our time after seeing `remote`: greater than both `last` and `remote`."""
    wall = max(last.wall_ms, remote.wall_ms, now_ms)
    if wall == last.wall_ms == remote.wall_ms:
        logical = max(last.logical, remote.logical) + 1
    elif wall == last.wall_ms:
        logical = last.logical + 1
    elif wall == remote.wall_ms:
        logical = remote.logical + 1
    else:
        logical = 0
    return HLC(wall, logical, node)


class HybridClock:
    """One node's clock: `now` for local events, `observe` for times seen elsewhere."""

    def __init__(self, node: str, last: HLC = ZERO, wall: WallMs = wall_ms) -> None:
        if not node:
            raise ValueError("a clock needs a node id")
        self.node, self.last, self._wall = node, last, wall

    def now(self) -> HLC:
        self.last = send(self.last, self._wall(), self.node)
        return self.last

    def observe(self, remote: HLC) -> HLC:
        if remote > self.last:
            self.last = receive(self.last, remote, self._wall(), self.node)
        return self.last
