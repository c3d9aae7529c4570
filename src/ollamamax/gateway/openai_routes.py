"""The OpenAI-compatible endpoints: translate, route like any Ollama request, translate back."""

from __future__ import annotations

import itertools
import random
import time
from typing import TYPE_CHECKING

from aiohttp import web

from ollamamax.api import ollama_types as ot
from ollamamax.api import openai_compat as oc
from ollamamax.api.http import json_response, read_body
from ollamamax.errors import NotFound
from ollamamax.gateway.adapters import OpenAIAdapter
from ollamamax.models.names import try_key

if TYPE_CHECKING:
    from ollamamax.gateway.app import Gateway

# Response ids only need to differ between responses; Ollama uses a small random number.
_serial = itertools.count(random.randrange(1, 1 << 30))


def add_routes(app: web.Application, gateway: Gateway) -> None:
    routes = OpenAIRoutes(gateway)
    app.router.add_route("POST", "/v1/chat/completions", routes.chat)
    app.router.add_route("POST", "/v1/completions", routes.completions)
    app.router.add_route("POST", "/v1/embeddings", routes.embeddings)
    app.router.add_get("/v1/models", routes.models)
    app.router.add_get("/v1/models/{model:.+}", routes.model)


class OpenAIRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, self.gateway.max_body)
        call = oc.chat_request(body, created=int(time.time()), serial=next(_serial))
        stream = oc.ChatStream(call.reply) if call.reply.stream else None
        adapter = OpenAIAdapter(call.reply, oc.chat_completion, stream)
        return await self.gateway.forward(request, "chat", ot.decode(call.body, ot.ChatRequest),
                                          call.path, call.body, call.reply.stream, adapter)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, self.gateway.max_body)
        call = oc.completion_request(body, created=int(time.time()), serial=next(_serial))
        stream = oc.CompletionStream(call.reply) if call.reply.stream else None
        adapter = OpenAIAdapter(call.reply, oc.text_completion, stream)
        return await self.gateway.forward(
            request, "generate", ot.decode(call.body, ot.GenerateRequest), call.path, call.body,
            call.reply.stream, adapter)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, self.gateway.max_body)
        call = oc.embedding_request(body)
        adapter = OpenAIAdapter(call.reply, oc.embedding_list)
        return await self.gateway.forward(request, "embed", ot.decode(call.body, ot.EmbedRequest),
                                          call.path, call.body, False, adapter)

    async def models(self, request: web.Request) -> web.Response:
        return json_response(oc.model_list({"models": await self.gateway.union_tags()}))

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        key = try_key(name)
        for entry in await self.gateway.union_tags():
            if key and try_key(entry.get("name") or entry.get("model") or "") == key:
                return json_response(oc.model_object(entry, name))
        raise NotFound(f"model '{name}' not found")
