"""A node's ``POST /api/pull``: Ollama's pull, into the node's own model store.

The answer is what Ollama streams (NDJSON progress events, see `models.registry`), or with
``"stream": false`` the last event alone. The manifest is fetched before the answer starts,
so a model the registry does not have is an HTTP 404 ``{"error": "pull model manifest: file
does not exist"}``; a failure after that ends the stream with an ``{"error": ...}`` line, as
Ollama does. A client that goes away cancels the pull; what was downloaded is kept and the
next pull of the model resumes it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from ollamamax.api import ollama_types as ot
from ollamamax.api.http import NDJSON, dumps, json_response
from ollamamax.errors import BadRequest, OllamaMaxError
from ollamamax.models import names
from ollamamax.models.registry import Puller

log = logging.getLogger(__name__)

Install = Callable[[str], Awaitable[str]]  # model name -> a sentence saying what was done


class PullRequest(msgspec.Struct, omit_defaults=True):
    """Ollama's pull request body."""

    model: str | None = None
    name: str | None = None  # older clients send "name"
    insecure: bool = False  # plain http to a registry named in the model
    stream: bool | None = None

    @property
    def model_name(self) -> str:
        return self.model or self.name or ""


def decode(body: bytes) -> PullRequest:
    """The request, with a valid model name; `BadRequest` otherwise (before anything starts)."""
    req = ot.decode_body(body, PullRequest)
    if not req.model_name:
        raise BadRequest("model is required")
    names.parse(req.model_name)
    return req


async def answer(request: web.Request, puller: Puller, body: bytes,
                 install: Install | None = None) -> web.StreamResponse:
    """Pull into the store; with `install` (the ``ollama`` engine), hand the model to the
    engine before saying "success"."""
    req = decode(body)
    events = puller.events(req.model_name, insecure=req.insecure)
    if install is not None:
        events = _installing(events, req.model_name, install)
    async with contextlib.aclosing(events):
        if req.stream is False:
            last = None
            async for event in events:
                last = event
            return json_response(last)
        head = [await anext(events)]  # "pulling manifest"
        second = await anext(events, None)  # after the manifest: its errors are HTTP errors
        if second is not None:
            head.append(second)
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)
        for event in head:
            await response.write(dumps(event) + b"\n")
        try:
            async for event in events:
                await response.write(dumps(event) + b"\n")
        except OllamaMaxError as exc:
            await response.write(dumps({"error": exc.message}) + b"\n")
        except ConnectionError:
            raise  # the client left: the pull is cancelled (its downloads kept)
        except Exception:  # the headers are out: end the stream with a sentence
            log.exception("unexpected error pulling %s", req.model_name)
            await response.write(dumps({"error": "internal error"}) + b"\n")
        await response.write_eof()
        return response



async def _installing(events: AsyncIterator[dict[str, Any]], name: str,
                      install: Install) -> AsyncIterator[dict[str, Any]]:
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for event in events:
            if event.get("status") == "success":
                yield {"status": await install(name)}
            yield event
