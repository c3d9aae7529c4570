"""Turning an engine's chunks into one answer when the client asked for ``"stream": false``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ollamamax.errors import EngineError

Chunk = dict[str, Any]


async def merge_chat(chunks: AsyncIterator[Chunk]) -> Chunk:
    content: list[str] = []
    thinking: list[str] = []
    tool_calls: list[Any] = []
    last: Chunk | None = None
    async for chunk in chunks:
        message = chunk.get("message") or {}
        content.append(message.get("content") or "")
        thinking.append(message.get("thinking") or "")
        tool_calls.extend(message.get("tool_calls") or ())
        last = chunk
    if last is None:
        raise EngineError("the engine produced no answer")
    merged_message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
    if any(thinking):
        merged_message["thinking"] = "".join(thinking)
    if tool_calls:
        merged_message["tool_calls"] = tool_calls
    return {**last, "message": merged_message}


async def merge_generate(chunks: AsyncIterator[Chunk]) -> Chunk:
    text: list[str] = []
    thinking: list[str] = []
    last: Chunk | None = None
    async for chunk in chunks:
        text.append(chunk.get("response") or "")
        thinking.append(chunk.get("thinking") or "")
        last = chunk
    if last is None:
        raise EngineError("the engine produced no answer")
    merged = {**last, "response": "".join(text)}
    if any(thinking):
        merged["thinking"] = "".join(thinking)
    return merged
