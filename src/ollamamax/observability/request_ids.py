"""Request ids: one per request, carried from the client through the gateway to the node and
back in the ``X-Request-Id`` header, and written in every log line made while serving it.

The gateway keeps a client's id (printable, at most 128 characters) or makes one; the
upstream client sends it to the node (`gateway.node_http` reads `logs.request_id`); the node keeps
it, logs it and echoes it; the gateway's answer carries it too.
"""

from __future__ import annotations

import os
import re
from typing import Any

from aiohttp import web

from ollamamax.logs import request_id as current

HEADER = "X-Request-Id"
# a typed request key where aiohttp has them (>= 3.13), a plain string before
_KEY: Any = web.RequestKey("ollamamax.request_id", str) if hasattr(web, "RequestKey") \
    else "ollamamax.request_id"
_VALID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")

def new_id() -> str:
    return os.urandom(8).hex()


def accept(value: str | None) -> str:
    """`value` if it is a usable id, else a new one."""
    return value if value and _VALID.fullmatch(value) else new_id()


@web.middleware
async def middleware(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    rid = accept(request.headers.get(HEADER))
    request[_KEY] = rid
    token = current.set(rid)
    try:
        return await handler(request)
    finally:
        current.reset(token)


async def _echo(request: web.BaseRequest, response: web.StreamResponse) -> None:
    rid = request.get(_KEY)
    if rid:
        response.headers[HEADER] = rid


def install(app: web.Application) -> None:
    """Answers carry their request's id (set by `middleware`, which must come first in the
    application's middlewares so that error answers have it too)."""
    app.on_response_prepare.append(_echo)


def of(request: web.BaseRequest) -> str:
    return str(request.get(_KEY, ""))
