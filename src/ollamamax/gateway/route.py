"""What the scheduler needs to know about an API request: model, size, prefix, priority."""

from __future__ import annotations

import functools
from collections.abc import Mapping

from ollamamax.api import ollama_types as ot
from ollamamax.errors import BadRequest
from ollamamax.models.names import model_key
from ollamamax.scheduler import PRIORITIES, RouteRequest
from ollamamax.scheduler.prefix import text_blocks

PRIORITY_HEADER = "X-OllamaMax-Priority"
CHARS_PER_TOKEN = 4  # the usual estimate; the node's tokenizer is not at hand here

# Clients send the same few model names again and again; invalid names raise and are not cached.
_model_key = functools.lru_cache(maxsize=4096)(model_key)

Request = ot.ChatRequest | ot.GenerateRequest | ot.EmbedRequest | ot.EmbeddingsRequest | \
    ot.ShowRequest


def route_request(endpoint: str, request: Request, headers: Mapping[str, str],
                  stream: bool) -> RouteRequest:
    text = prompt_text(request)
    options = getattr(request, "options", None)
    predict = getattr(options, "num_predict", None) or 0
    return RouteRequest(
        model=_model_key(request.model_name), endpoint=endpoint, stream=stream,
        prompt_tokens=(len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN,
        output_tokens=max(0, predict), prefix=text_blocks(text) if text else (),
        priority=priority(headers))


def prompt_text(request: Request) -> str:
    """The text the node will see first, in order: what its prefix cache keys on."""
    if isinstance(request, ot.ChatRequest):
        return "".join(f"<{m.role}>{m.content or ''}\n" for m in request.messages or ())
    if isinstance(request, ot.GenerateRequest):
        return (f"<system>{request.system}\n" if request.system else "") + (request.prompt or "")
    if isinstance(request, ot.EmbedRequest):
        return "\n".join(request.inputs)
    if isinstance(request, ot.EmbeddingsRequest):
        return request.prompt or ""
    return ""


def priority(headers: Mapping[str, str]) -> int:
    value = headers.get(PRIORITY_HEADER)
    if value is None:
        return PRIORITIES["default"]
    try:
        return PRIORITIES[value.strip().lower()]
    except KeyError:
        raise BadRequest(f"{PRIORITY_HEADER} must be one of {', '.join(PRIORITIES)}, "
                         f"not {value!r}") from None
