"""How a node's answer is written to the client: unchanged (Ollama API) or translated (OpenAI).

An adapter sees bytes from the node and returns bytes for the client. The request path
(`gateway.proxy`) never looks inside the payloads itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import msgspec
from aiohttp import web

from ollamamax.api import openai_compat
from ollamamax.api.http import JSON, NDJSON, dumps

Convert = Callable[[dict[str, Any], openai_compat.ReplyContext], dict[str, Any]]


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
    """Ollama API: the node's lines go to the client unchanged, as they arrive.

    Only whole lines are passed on: the rare piece that ends mid-line is held until its
    newline, so a stream cut mid-line ends with Ollama's error line, never with half a JSON
    object a client would fail to parse. (A node writes one line at a time: the fast path.)
    """

    __slots__ = ("_partial",)
    stream_content_type = NDJSON

    def __init__(self) -> None:
        self._partial = b""

    def whole(self, status: int, body: bytes) -> web.Response:
        return web.Response(status=status, body=body, content_type=JSON)

    def feed(self, data: bytes) -> bytes:
        if self._partial:
            data = self._partial + data
            self._partial = b""
        if data.endswith(b"\n") or not data:
            return data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        return data[:cut]

    def end(self) -> bytes:
        tail, self._partial = self._partial, b""
        return tail  # a last line without its newline, as the node sent it

    def error(self, message: str) -> bytes:
        # Ollama ends a failed stream with one more NDJSON line: {"error": "..."}; a line
        # the node did not finish is dropped.
        self._partial = b""
        return dumps({"error": message}) + b"\n"


class OpenAIAdapter:
    """OpenAI API: the node's NDJSON chunks become server-sent events, its JSON an OpenAI body.

    `stream` converts chunks (``ChatStream``/``CompletionStream``); `convert` turns a complete
    Ollama answer into the OpenAI one. Node errors keep their status in OpenAI's error shape.
    """

    __slots__ = ("_buffer", "_convert", "_reply", "_stream")
    stream_content_type = openai_compat.SSE_CONTENT_TYPE

    def __init__(self, reply: openai_compat.ReplyContext, convert: Convert,
                 stream: openai_compat.ChatStream | openai_compat.CompletionStream | None = None,
                 ) -> None:
        self._reply = reply
        self._convert = convert
        self._stream = stream
        self._buffer = b""

    def whole(self, status: int, body: bytes) -> web.Response:
        try:
            answer = msgspec.json.decode(body) if body else {}
        except msgspec.DecodeError:
            answer = {"error": body.decode("utf-8", "replace")[:200]}
        if status >= 400 or "error" in answer:
            message = str(answer.get("error", f"HTTP {status}"))
            return web.Response(status=status if status >= 400 else 502, content_type=JSON,
                                body=dumps(openai_compat.error_object(status, message)))
        return web.Response(status=status, body=dumps(self._convert(answer, self._reply)),
                            content_type=JSON)

    def feed(self, data: bytes) -> bytes:
        assert self._stream is not None
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        return b"".join(self._stream.chunk(msgspec.json.decode(line))
                        for line in lines if line.strip())

    def end(self) -> bytes:
        assert self._stream is not None
        tail = self.feed(b"\n") if self._buffer.strip() else b""
        return tail + self._stream.done()

    def error(self, message: str) -> bytes:
        assert self._stream is not None
        return self._stream.error(message)
