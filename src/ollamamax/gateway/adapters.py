"""How a node's answer is written to the client: unchanged (Ollama API) or translated (OpenAI).

An adapter sees bytes from the node and returns bytes for the client. The request path
(`gateway.proxy`) never looks inside the payloads itself.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from ollamamax.api.http import JSON, NDJSON, dumps


class Adapter(Protocol):
    stream_content_type: str

    def whole(self, status: int, body: bytes) -> web.Response:
        """A complete answer (not streamed, or an error status from the node)."""

    def feed(self, data: bytes) -> bytes:
        """Bytes of a stream from the node -> bytes for the client (may buffer partial lines)."""

    def end(self) -> bytes:
        """The bytes that close a successful stream."""

    def error(self, message: str) -> bytes:
        """The chunk that ends a stream broken after its first byte."""


class OllamaPassthrough:
    """Ollama API: the node's bytes go to the client unchanged, as they arrive."""

    __slots__ = ("_at_line_start",)
    stream_content_type = NDJSON

    def __init__(self) -> None:
        self._at_line_start = True

    def whole(self, status: int, body: bytes) -> web.Response:
        return web.Response(status=status, body=body, content_type=JSON)

    def feed(self, data: bytes) -> bytes:
        if data:
            self._at_line_start = data.endswith(b"\n")
        return data

    def end(self) -> bytes:
        return b""

    def error(self, message: str) -> bytes:
        # Ollama ends a failed stream with one more NDJSON line: {"error": "..."}.
        prefix = b"" if self._at_line_start else b"\n"
        return prefix + dumps({"error": message}) + b"\n"
