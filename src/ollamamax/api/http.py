"""Small HTTP helpers shared by the gateway and the node (aiohttp)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ollamamax.errors import BadRequest, PayloadTooLarge

JSON = "application/json"
NDJSON = "application/x-ndjson"

_encode = msgspec.json.Encoder().encode


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encode(data), status=status, content_type=JSON, headers=headers)


def dumps(data: Any) -> bytes:
    return _encode(data)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 above `limit` bytes, and with 400 when it cannot be
    read as sent (a ``Content-Encoding: gzip`` body that is not gzip)."""
    try:
        return await _read_body(request, limit)
    except web.RequestPayloadError as exc:
        detail = getattr(exc.__cause__, "message", "") or "it is malformed"
        raise BadRequest(f"could not read the request body: {detail}") from None


async def _read_body(request: web.Request, limit: int) -> bytes:
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
