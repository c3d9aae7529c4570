"""What every engine does for its node.

An engine answers the Ollama API for one machine: it lists and shows models, says what is
loaded, and turns typed requests (`ollamamax.api.ollama_types`) into Ollama-shaped answers.
`chat` and `generate` always yield chunks as Ollama streams them (the last one has
``"done": true`` and the statistics); the node merges them when the client asked for
``"stream": false``, so engines implement one path only.

Errors are `ollamamax.errors` types: `ModelNotFound` (404), `BadRequest` (400),
`EngineOverloaded` (503), `EngineError` (500).
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, ClassVar

from ollamamax.api.ollama_types import (
    ChatRequest,
    EmbedRequest,
    GenerateRequest,
    ShowRequest,
)
from ollamamax.config import NodeConfig

Chunk = dict[str, Any]


class Engine(abc.ABC):
    name: ClassVar[str]

    def __init__(self, config: NodeConfig) -> None:
        self.config = config

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare to serve (open sessions, scan the store)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop generating, free models and connections."""

    @abc.abstractmethod
    async def healthy(self) -> bool:
        """True when the engine can answer requests."""

    @abc.abstractmethod
    async def tags(self) -> list[dict[str, Any]]:
        """The models this node can serve, as ``/api/tags`` entries."""

    @abc.abstractmethod
    async def ps(self) -> list[dict[str, Any]]:
        """The models loaded now, as ``/api/ps`` entries."""

    @abc.abstractmethod
    async def show(self, request: ShowRequest) -> dict[str, Any]:
        """``/api/show`` for one model."""

    @abc.abstractmethod
    def chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Ollama chat chunks; the last has ``done: true``."""

    @abc.abstractmethod
    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        """Ollama generate chunks; the last has ``done: true``."""

    @abc.abstractmethod
    async def embed(self, request: EmbedRequest) -> dict[str, Any]:
        """The ``/api/embed`` answer."""

    async def refresh_status(self) -> None:  # noqa: B027 - optional hook
        """Bring what `load_status` reports up to date (engines that must ask someone)."""

    @abc.abstractmethod
    def load_status(self) -> dict[str, Any]:
        """For telemetry: ``{"loaded": [{name, size, expires_at, busy, slots, queued}],
        "queue_depth": int}``."""


_stamp: list[Any] = [0, ""]  # the last (millisecond, text) made: chunks come many per ms


def created_at() -> str:
    """Ollama's ``created_at``: RFC 3339 in UTC, to the millisecond.

    Every chunk carries one, and formatting a datetime cost a tenth of a fast node's time per
    chunk (profiled), so the text is reused within the same millisecond.
    """
    now_ms = time.time_ns() // 1_000_000
    if now_ms != _stamp[0]:
        seconds, ms = divmod(now_ms, 1000)
        _stamp[0] = now_ms
        _stamp[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"
    return str(_stamp[1])


_FOREVER_EPOCH = 11_001_571_200.0  # 2318-08-18: where Go's longest duration from now ends


def iso_from_epoch(seconds: float) -> str:
    if seconds >= _FOREVER_EPOCH:
        # Ollama reports a model kept forever with a far-future expiry; later dates (or inf)
        # would overflow datetime and fail /api/ps for every model.
        return "2318-08-18T00:00:00Z"
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def ns(seconds: float) -> int:
    """Durations in Ollama's answers are integer nanoseconds."""
    return int(seconds * 1e9)


class Stopwatch:
    """Marks for Ollama's statistics: load, prompt evaluation and generation durations."""

    __slots__ = ("loaded", "prompt_done", "start")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.loaded = self.start
        self.prompt_done = self.start

    def mark_loaded(self) -> None:
        self.loaded = self.prompt_done = time.perf_counter()

    def mark_first_token(self) -> None:
        self.prompt_done = time.perf_counter()

    def stats(self, prompt_tokens: int, output_tokens: int) -> dict[str, int]:
        end = time.perf_counter()
        return {
            "total_duration": ns(end - self.start),
            "load_duration": ns(self.loaded - self.start),
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": ns(self.prompt_done - self.loaded),
            "eval_count": output_tokens,
            "eval_duration": ns(end - self.prompt_done),
        }
