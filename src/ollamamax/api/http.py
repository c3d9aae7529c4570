"""Small HTTP helpers shared by the gateway and the node (aiohttp)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ollamamax.errors import PayloadTooLarge

JSON = "application/json"
NDJSON = "application/x-ndjson"

_encode = msgspec.json.Encoder().encode


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encode(data), status=status, content_type=JSON, headers=headers)


def dumps(data: Any) -> bytes:
    return _encode(data)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 above `limit` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit}")
    if length is not None:
        return await request.read()  # aiohttp reads exactly `length` bytes
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


async def root(request: web.Request) -> web.Response:
    """``GET /`` and ``HEAD /``: what Ollama answers."""
    return web.Response(text="Ollama is running")
