"""A small discrete-event core: a virtual clock and a heap of callbacks.

No asyncio and no wall clock: `now` moves only when the next event is taken off the heap, so
a simulated hour costs as much as the events in it. Events at the same time run in the order
they were scheduled (a sequence number breaks ties), which keeps every run reproducible.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

Callback = Callable[[Any], None]


class EventLoop:
    __slots__ = ("_heap", "_seq", "events", "now")

    def __init__(self) -> None:
        self.now = 0.0
        self.events = 0  # callbacks run so far
        self._heap: list[tuple[float, int, Callback, Any]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, time: float, callback: Callback, arg: Any = None) -> None:
        """Run ``callback(arg)`` at virtual `time` (never earlier than now)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(time, self.now), self._seq, callback, arg))

    def after(self, delay: float, callback: Callback, arg: Any = None) -> None:
        self.at(self.now + delay, callback, arg)

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def step(self) -> bool:
        """Run the earliest event; False when there is none."""
        if not self._heap:
            return False
        time, _, callback, arg = heapq.heappop(self._heap)
        self.now = time
        self.events += 1
        callback(arg)
        return True

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Run events until none is left or `until()` says the simulation is over."""
        heap, pop = self._heap, heapq.heappop
        while heap:
            if until is not None and until():
                return
            time, _, callback, arg = pop(heap)
            self.now = time
            self.events += 1
            callback(arg)
