"""The one place that turns exceptions into HTTP answers.

Ollama's endpoints answer ``{"error": "..."}``; the OpenAI-compatible ones answer OpenAI's
``{"error": {"message", "type", "param", "code"}}``, as Ollama's own ``/v1`` does, so both
kinds of client show the sentence. Unknown paths and wrong methods get the same shapes.
Anything unexpected is logged once with the phrase "unexpected error" and answered 500
without a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from ollamamax.errors import OllamaMaxError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                 403: "permission_error", 404: "not_found_error", 413: "invalid_request_error",
                 429: "rate_limit_error"}


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/")


def error_body(status: int, message: str, openai: bool = False) -> bytes:
    if openai:
        kind = _OPENAI_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return msgspec.json.encode(
            {"error": {"message": message, "type": kind, "param": None, "code": None}})
    return msgspec.json.encode({"error": message})


def error_response(status: int, message: str, openai: bool = False,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(status, message, openai),
                        content_type="application/json", headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    openai = is_openai_path(request.path)
    try:
        return await handler(request)
    except OllamaMaxError as exc:
        return error_response(exc.status, exc.message, openai, headers=exc.headers or None)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.status != 404 else f"{request.method} {request.path}: not found"
        return error_response(exc.status, message.lower() if exc.status != 404 else message,
                              openai, headers={k: v for k, v in exc.headers.items()
                                               if k.lower() == "allow"})
    except (ConnectionResetError, web.HTTPClientError):
        raise
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(500, "internal error", openai)
