"""Model-sync transfers under way, as the dashboard, ``/metrics`` and ``status`` show them.

Model sync (peer-to-peer blob transfers between nodes) does not exist yet: this table is the
place it will report to (`start`, `progress`, `finish`), and until then it stays empty.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Transfer:
    id: int
    model: str
    source: str
    target: str
    total: int
    done: int = 0
    started: float = 0.0


class Transfers:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.active: dict[int, Transfer] = {}
        self._ids = itertools.count(1)

    def start(self, model: str, source: str, target: str, total: int) -> int:
        transfer = Transfer(next(self._ids), model, source, target, total, 0, self.clock())
        self.active[transfer.id] = transfer
        return transfer.id

    def progress(self, transfer_id: int, done: int) -> None:
        self.active[transfer_id].done = done

    def finish(self, transfer_id: int) -> None:
        self.active.pop(transfer_id, None)

    def rows(self) -> list[tuple[str, str, str, int, int]]:
        """(model, source, target, bytes done, bytes in all), for the metrics."""
        return [(t.model, t.source, t.target, t.done, t.total) for t in self.active.values()]

    def describe(self) -> list[dict[str, Any]]:
        now = self.clock()
        out = []
        for t in self.active.values():
            elapsed = max(1e-9, now - t.started)
            out.append({"id": t.id, "model": t.model, "source": t.source, "target": t.target,
                        "bytes_done": t.done, "bytes_total": t.total,
                        "progress": t.done / t.total if t.total else 0.0,
                        "bytes_per_s": t.done / elapsed})
        return out
