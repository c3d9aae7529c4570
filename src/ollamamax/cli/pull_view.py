"""Shows a pull's progress events (Ollama's ``/api/pull`` shape) as `ollama pull` does:
one line per step and a progress bar per blob."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class PullView:
    """Feed it events with `show`; use it as a context manager around the pull."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                                 transient=False)
        self.bars: dict[str, TaskID] = {}

    def __enter__(self) -> PullView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def show(self, event: dict[str, Any]) -> None:
        digest = event.get("digest")
        if not digest:
            self.progress.console.print(str(event.get("status", "")), highlight=False)
            return
        bar = self.bars.get(digest)
        if bar is None:
            bar = self.bars[digest] = self.progress.add_task(
                str(event.get("status", digest)), total=event.get("total") or 0)
        self.progress.update(bar, completed=event.get("completed") or 0,
                             total=event.get("total") or 0)
