"""The ordering inside the admission queue: which waiting request of a model goes first.

Two implementations behind one interface, chosen by name (flag ``scheduler.queue_order``):

- ``heap`` (default): a binary heap (`heapq`); push and pop O(log n).
- ``sorted_list``: the optimisation catalogue's "before", kept as a baseline: a list kept
  sorted by inserting each item after a linear scan from the front, O(n) per push (so
  O(n^2) to fill), pop from the front O(n) (a memmove). Scanning from the back would be O(1)
  for items that arrive in tag order, but not for the priority jumps that aging and
  deadlines make; the catalogue's naive version scans from the front, and so does this one.

Both order items by their own ``<`` (`Waiting` compares ``(tag, seq)``, a total order), drop
items marked ``gone`` lazily when they reach the front, and pop exactly the same sequence
for the same pushes and cancellations: property-tested in tests/unit/scheduler.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any, Protocol


class Order(Protocol):
    def push(self, item: Any) -> None:
        """Add `item`."""

    def first(self) -> Any | None:
        """The smallest item not ``gone`` (gone ones in front are dropped), or None."""

    def pop(self) -> Any:
        """Remove and return the item `first` returned (call `first` before)."""

    def items(self) -> list[Any]:
        """Every item held, gone ones included, in no particular order."""

    def __len__(self) -> int:
        """Items held, gone ones not yet dropped included."""


class HeapOrder:
    __slots__ = ("_items",)

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self._items = list(items)
        heapq.heapify(self._items)

    def push(self, item: Any) -> None:
        heapq.heappush(self._items, item)

    def first(self) -> Any | None:
        items = self._items
        while items and items[0].gone:
            heapq.heappop(items)
        return items[0] if items else None

    def pop(self) -> Any:
        return heapq.heappop(self._items)

    def items(self) -> list[Any]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


class SortedListOrder:
    __slots__ = ("_items",)

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self._items = sorted(items)  # bulk construction (a migration, a benchmark's fill)

    def push(self, item: Any) -> None:
        items = self._items
        for k, other in enumerate(items):  # the linear scan the catalogue describes
            if item < other:
                items.insert(k, item)
                return
        items.append(item)

    def first(self) -> Any | None:
        items = self._items
        while items and items[0].gone:
            del items[0]
        return items[0] if items else None

    def pop(self) -> Any:
        return self._items.pop(0)

    def items(self) -> list[Any]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


ORDERS = {
    "heap": "ollamamax.scheduler.ordering:HeapOrder",
    "sorted_list": "ollamamax.scheduler.ordering:SortedListOrder",
}
