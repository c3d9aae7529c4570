"""Requests waiting at the gateway for a free slot: priority, deadlines, aging, fairness, limits.

When no node can start a request now, it waits here instead of in one node's queue, so it can
go to whichever node frees a slot first (late binding). Each waiting request gets a *tag*, a
virtual start time, and the smallest tag goes first:

    tag = max(now, last tag of the same key) + class offset, capped by the request's deadline

- the class offset puts ``interactive`` before ``default`` before ``batch``, yet a batch
  request that has waited longer than the offset competes as a new interactive one: aging, so
  nothing starves;
- a key's tags advance by one `quantum` per request, so a key that floods the queue is served
  in turn with the others, not before them (start-time fair queuing);
- limits: at most `max_waiting` in all (503) and `max_per_key` per identified key (429), both
  with a Retry-After estimated from the recent dispatch rate; requests without a key share
  only the global limit.

Requests wait per model (one heap each), so a freed slot of model *m* goes straight to the best
request for *m* with no head-of-line blocking by other models. Pure: time is an argument.
The ordering structure is swappable by name (flag `scheduler.queue_order`: the heap, or the
catalogue's sorted-list baseline), also while requests wait (`set_order`).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from ollamamax import registry
from ollamamax.errors import OllamaMaxError
from ollamamax.scheduler.ordering import ORDERS, Order

# seconds of virtual time each class starts behind `interactive`
CLASS_OFFSET = (0.0, 2.0, 30.0)


class QueueFull(OllamaMaxError):
    """Refused by admission control; `status` 503 (global) or 429 (per key)."""

    def __init__(self, message: str, status: int, retry_after: float) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}


@dataclass(order=True, slots=True)
class Waiting:
    tag: float
    seq: int
    request: Any = field(compare=False)  # the RouteRequest
    model: int = field(compare=False, default=-1)
    key: str = field(compare=False, default="")
    arrived: float = field(compare=False, default=0.0)
    ticket: Any = field(compare=False, default=None)  # whatever the caller needs back
    target: int = field(compare=False, default=-1)  # the node it waits for a slot of
    gone: bool = field(compare=False, default=False)  # dispatched or cancelled


class AdmissionQueue:
    def __init__(self, *, max_waiting: int = 1024, max_per_key: int = 256,
                 quantum: float = 0.1, order: str = "heap") -> None:
        self.max_waiting = max_waiting
        self.max_per_key = max_per_key
        self.quantum = quantum
        self.order = order
        self._order = registry.load("queue order", ORDERS, order)
        self._heaps: dict[int, Order] = {}
        self._last_tag: dict[str, float] = {}
        self._per_key: Counter[str] = Counter()
        self._per_model: Counter[int] = Counter()
        self._targets: dict[int, Counter[int]] = {}  # model -> node -> requests held for it
        self._seq = itertools.count()
        self._waiting = 0
        self._dispatched: deque[float] = deque(maxlen=256)  # recent dispatch times

    def __len__(self) -> int:
        return self._waiting

    def waiting_for(self, model: int) -> int:
        """Requests held for `model`."""
        return self._per_model[model]

    def targets(self, model: int) -> dict[int, int]:
        """``{node: requests held for its slots of `model`}`` (nodes with none left out)."""
        return self._targets.get(model) or {}

    def models(self) -> list[int]:
        """Models with requests waiting."""
        return [m for m, heap in self._heaps.items() if heap]

    def push(self, request: Any, model: int, now: float, ticket: Any = None,
             target: int = -1) -> Waiting:
        """Queue `request` (waiting for a slot of `target`); `QueueFull` at a limit."""
        key = getattr(request, "key", "")
        if self._waiting >= self.max_waiting:
            raise QueueFull(f"server busy: {self._waiting} requests are waiting; try again later",
                            503, self.retry_after())
        if key and self._per_key[key] >= self.max_per_key:  # anonymous: the global limit only
            raise QueueFull(f"too many requests waiting for this key ({self._per_key[key]}); "
                            "try again later", 429, self.retry_after(self._per_key[key]))
        priority = min(max(getattr(request, "priority", 1), 0), len(CLASS_OFFSET) - 1)
        start = max(now, self._last_tag.get(key, now))
        self._last_tag[key] = start + self.quantum
        tag = start + CLASS_OFFSET[priority]
        deadline = getattr(request, "deadline", None)
        if deadline is not None:
            tag = min(tag, deadline)
        item = Waiting(tag, next(self._seq), request, model, key, now, ticket, target)
        heap = self._heaps.get(model)
        if heap is None:
            heap = self._heaps[model] = self._order()
        heap.push(item)
        self._per_key[key] += 1
        self._per_model[model] += 1
        self._targets.setdefault(model, Counter())[target] += 1
        self._waiting += 1
        return item

    def peek(self, model: int) -> Waiting | None:
        heap = self._heaps.get(model)
        return heap.first() if heap is not None else None

    def pop(self, model: int, now: float) -> Waiting | None:
        """The next request for `model`, or None."""
        item = self.peek(model)
        if item is None:
            return None
        self._heaps[model].pop()
        item.gone = True
        self._forget(item)
        self._dispatched.append(now)
        return item

    def head(self, model: int, k: int) -> list[Waiting]:
        """The first `k` requests waiting for `model`, in order (they stay queued)."""
        heap = self._heaps.get(model)
        out: list[Waiting] = []
        if heap is None:
            return out
        while len(out) < k and heap.first() is not None:
            out.append(heap.pop())
        for item in out:
            heap.push(item)
        return out

    def take(self, item: Waiting, now: float) -> None:
        """Dispatch `item`, wherever it is in its model's order (dropped lazily)."""
        if not item.gone:
            item.gone = True
            self._forget(item)
            self._dispatched.append(now)

    def set_order(self, order: str) -> None:
        """Move every waiting request into the ordering structure named `order`."""
        cls = registry.load("queue order", ORDERS, order)
        self._heaps = {m: cls(heap.items()) for m, heap in self._heaps.items()}
        self.order, self._order = order, cls

    def cancel(self, item: Waiting) -> None:
        """The request gave up (client left, deadline passed); removed lazily from its heap."""
        if not item.gone:
            item.gone = True
            self._forget(item)

    def retry_after(self, ahead: int | None = None) -> float:
        """Seconds until `ahead` (default: all waiting) requests are likely dispatched."""
        ahead = self._waiting if ahead is None else ahead
        if len(self._dispatched) >= 2:
            span = self._dispatched[-1] - self._dispatched[0]
            rate = (len(self._dispatched) - 1) / span if span > 0 else 0.0
            if rate > 0:
                return max(1.0, math.ceil(ahead / rate))
        return 1.0

    def _forget(self, item: Waiting) -> None:
        self._waiting -= 1
        self._per_model[item.model] -= 1
        held = self._targets[item.model]
        held[item.target] -= 1
        if held[item.target] <= 0:
            del held[item.target]
        self._per_key[item.key] -= 1
        if self._per_key[item.key] <= 0:
            del self._per_key[item.key]
