"""OpenAI requests in, Ollama requests out; Ollama answers in, OpenAI answers out.

Nodes speak only the Ollama API, so the gateway translates ``/v1/*`` exactly as Ollama's own
compatibility layer does: ollama/ollama ``openai/openai.go`` and ``middleware/openai.go`` at
commit 077a50baa53553339fa1b545c74e08d88db90add. Where this module departs from Ollama, a
comment says why. Pure: bytes and dicts in, bytes and dicts out; no I/O, no clock, no
randomness (the caller passes the creation time and the number in the response id).

Requests (bad input raises `BadRequest` with a sentence; unknown fields are ignored)
    chat_request(body, *, created, serial) -> OllamaCall      /v1/chat/completions -> /api/chat
    completion_request(body, *, created, serial) -> OllamaCall   /v1/completions -> /api/generate
    embedding_request(body) -> OllamaCall                     /v1/embeddings -> /api/embed
    ``OllamaCall(path, body, reply)``: the Ollama path and body, and the `ReplyContext`
    (model, id, created, stream, include_usage, encoding_format) the answer side needs.

Answers
    chat_completion(answer, reply) -> dict     a ``chat.completion`` from the final Ollama object
    ChatStream(reply)                          ``chat.completion.chunk`` server-sent events:
      .chunk(ollama_chunk) -> bytes              the events for one NDJSON chunk; the last chunk
                                                 (``done``) adds the usage event and [DONE]
      .done() -> bytes                           at upstream EOF: b"", or an error event when the
                                                 stream was cut before its last chunk
      .error(message, status=500) -> bytes       the OpenAI error event that ends a failed stream
    text_completion(answer, reply) -> dict     a ``text_completion``
    CompletionStream(reply)                    the same three methods, ``text_completion`` chunks
    embedding_list(answer, reply) -> dict      ``/api/embed`` -> a list of embeddings (float|base64)
    model_list(tags) -> dict                   ``/api/tags`` -> ``GET /v1/models``
    model_object(show, name) -> dict           ``/api/show`` -> ``GET /v1/models/{name}``
    owned_by(name) -> str                      the namespace of a model name, "library" by default
    error_object(status, message) -> dict      OpenAI's ``{"error": {...}}`` body
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import msgspec
import numpy as np

from ollamamax.api.ollama_types import INT64_MAX, ROLES, Int64, decode_body, shown
from ollamamax.errors import BadRequest

SSE_CONTENT_TYPE = "text/event-stream"
DONE_EVENT = b"data: [DONE]\n\n"
_FINGERPRINT = "fp_ollama"
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """What the answer side needs to know about the OpenAI request."""

    model: str
    id: str = ""
    created: int = 0
    stream: bool = False
    include_usage: bool = False
    encoding_format: str = "float"


@dataclass(frozen=True, slots=True)
class OllamaCall:
    """The Ollama request that answers an OpenAI one."""

    path: str
    body: bytes
    reply: ReplyContext


# --- OpenAI request bodies ----------------------------------------------------------------
# Every field admits null: Go's decoder treats null as "absent", and some SDKs send it.


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    id: str | None = None
    function: _Function | None = None


class _Message(msgspec.Struct):
    role: str | None = None
    content: str | list[dict[str, Any]] | None = None
    reasoning: str | None = None
    tool_calls: list[_ToolCall] | None = None
    name: str | None = None
    tool_call_id: str | None = None


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class _JsonSchema(msgspec.Struct):
    schema: msgspec.Raw = msgspec.Raw()  # forwarded byte for byte, key order kept


class _ResponseFormat(msgspec.Struct):
    type: str | None = None
    json_schema: _JsonSchema | None = None


class _Reasoning(msgspec.Struct):
    effort: str | None = None


# A token budget below 0 means nothing in OpenAI's API (it refuses it); Ollama would run on.
_Tokens = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]


class _Sampling(msgspec.Struct):
    model: str | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    max_tokens: _Tokens | None = None
    seed: Int64 | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    top_p: float | None = None


class _ChatBody(_Sampling):
    messages: list[_Message] | None = None
    max_completion_tokens: _Tokens | None = None
    response_format: _ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    reasoning: _Reasoning | None = None
    reasoning_effort: str | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None  # OpenAI's range


class _CompletionBody(_Sampling):
    prompt: Any = None  # checked by hand: a clearer sentence than a type error
    suffix: str | None = None


class _EmbeddingBody(msgspec.Struct):
    model: str | None = None
    input: Any = None  # checked by hand, as Ollama does
    dimensions: Int64 | None = None
    encoding_format: str | None = None


B = TypeVar("B", _ChatBody, _CompletionBody, _EmbeddingBody)


def _decode(body: bytes, kind: type[B]) -> B:
    request = decode_body(body, kind)
    if not request.model:
        raise BadRequest("model is required")
    return request


# --- requests ------------------------------------------------------------------------------


def chat_request(body: bytes, *, created: int, serial: int) -> OllamaCall:
    """``/v1/chat/completions`` body -> ``/api/chat`` body; the id is ``chatcmpl-<serial>``."""
    request = _decode(body, _ChatBody)
    if not request.messages:
        raise BadRequest("[] is too short - 'messages'")  # OpenAI's and Ollama's sentence
    ollama: dict[str, Any] = {"model": request.model, "messages": _messages(request.messages),
                              "stream": bool(request.stream)}
    schema = _format(request.response_format)
    if schema is not None:
        ollama["format"] = schema
    ollama["options"] = _chat_options(request)
    if request.tools:
        ollama["tools"] = request.tools
    think = _think(request)
    if think is not None:
        ollama["think"] = think
    if request.logprobs:
        ollama["logprobs"] = True
    if request.top_logprobs:
        ollama["top_logprobs"] = request.top_logprobs
    reply = _reply(request, f"chatcmpl-{serial}", created)
    return OllamaCall("/api/chat", _encode(ollama), reply)


def completion_request(body: bytes, *, created: int, serial: int) -> OllamaCall:
    """``/v1/completions`` body -> ``/api/generate`` body; the id is ``cmpl-<serial>``.

    ``echo``, ``n``, ``best_of`` and ``logprobs`` are ignored, as Ollama's layer ignores them
    (it forwards ``logprobs`` but never returns them, so we spare the node the work).
    """
    request = _decode(body, _CompletionBody)
    prompt = "" if request.prompt is None else request.prompt
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string; lists of prompts and token arrays "
                         "are not supported")
    ollama: dict[str, Any] = {"model": request.model, "prompt": prompt}
    if request.suffix:
        ollama["suffix"] = request.suffix
    ollama["stream"] = bool(request.stream)
    ollama["options"] = _completion_options(request)
    reply = _reply(request, f"cmpl-{serial}", created)
    return OllamaCall("/api/generate", _encode(ollama), reply)


def embedding_request(body: bytes) -> OllamaCall:
    """``/v1/embeddings`` body -> ``/api/embed`` body."""
    request = _decode(body, _EmbeddingBody)
    encoding = (request.encoding_format or "").lower()
    if encoding not in ("", "float", "base64"):
        raise BadRequest(f"Invalid value for 'encoding_format' = {request.encoding_format}. "
                         "Supported values: ['float', 'base64'].")
    ollama: dict[str, Any] = {"model": request.model, "input": _embed_input(request.input)}
    if request.dimensions:  # 0 means "not given", as Go's omitempty has it
        if request.dimensions < 0:
            raise BadRequest("dimensions must be a positive number")
        ollama["dimensions"] = request.dimensions
    reply = ReplyContext(model=request.model or "", encoding_format=encoding or "float")
    return OllamaCall("/api/embed", _encode(ollama), reply)


def _reply(request: _Sampling, reply_id: str, created: int) -> ReplyContext:
    options = request.stream_options
    return ReplyContext(model=request.model or "", id=reply_id, created=created,
                        stream=bool(request.stream),
                        include_usage=bool(options is not None and options.include_usage))


def _messages(messages: list[_Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        if message.role not in ROLES:
            raise BadRequest(f"invalid role {shown(message.role)} in messages[{position}]: "
                             "expected one of " + ", ".join(ROLES))
        tool_name = _tool_name(message, messages)
        content = message.content
        if isinstance(content, str):
            out.append(_ollama_message(message, content, tool_name))
        elif isinstance(content, list):
            out.extend(_part_messages(message, content, tool_name))
        elif message.tool_calls is None:
            raise BadRequest(f"invalid message content type: null in messages[{position}]; "
                             "content may be null only when the message has tool_calls")
        else:
            out.append(_ollama_message(message, "", ""))  # Ollama drops tool_name here too
    return out


def _ollama_message(message: _Message, content: str, tool_name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role or "", "content": content}
    _attach_extras(out, message, tool_name)
    return out


def _attach_extras(out: dict[str, Any], message: _Message, tool_name: str) -> None:
    if message.reasoning:
        out["thinking"] = message.reasoning
    if message.tool_calls:
        out["tool_calls"] = [_ollama_tool_call(call) for call in message.tool_calls]
    if tool_name:
        out["tool_name"] = tool_name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id


def _part_messages(message: _Message, parts: list[dict[str, Any]],
                   tool_name: str) -> list[dict[str, Any]]:
    """Ollama turns each content part into a message of its own (text parts are not joined),
    and only a message with tool_calls keeps its tool fields, on its last part."""
    role = message.role or ""
    out = [_part_message(role, part) for part in parts]
    if message.tool_calls:
        if not out:  # Ollama would attach the calls to the previous message: keep them here
            out.append({"role": role, "content": ""})
        _attach_extras(out[-1], message, tool_name)
    return out


def _part_message(role: str, part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise BadRequest("invalid message format: a text part needs a string 'text'")
        return {"role": role, "content": text}
    if kind == "image_url":
        return {"role": role, "content": "", "images": [_image(part.get("image_url"))]}
    raise BadRequest(f"invalid message format: content part type {kind!r} is not supported "
                     "(use 'text' or 'image_url')")


_IMAGE_PREFIXES = ("data:;base64,", *(f"data:image/{kind};base64,"
                                       for kind in ("jpeg", "jpg", "png", "webp")))


def _image(value: Any) -> str:
    """A data URL's base64 payload, checked; the gateway never fetches remote images."""
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise BadRequest("invalid message format: image_url needs a 'url' string")
    if url.startswith(("http://", "https://")):
        raise BadRequest("image URLs are not currently supported, please use base64 encoded "
                         "data instead")
    for prefix in _IMAGE_PREFIXES:
        if url.startswith(prefix):
            return _checked_base64(url[len(prefix):])
    raise BadRequest("invalid image input: expected a data:image/(jpeg|jpg|png|webp);base64, "
                     "URL")


def _checked_base64(data: str) -> str:
    data = data.replace("\r", "").replace("\n", "")  # Go's decoder skips line breaks too
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("invalid image input: the data URL is not valid base64") from None
    return data


_BAD_ARGUMENTS = ("invalid tool call arguments: 'arguments' must be a JSON object encoded "
                  "as a string")


def _ollama_tool_call(call: _ToolCall) -> dict[str, Any]:
    function = call.function or _Function()
    try:
        arguments = msgspec.json.decode(function.arguments or "")
    except msgspec.DecodeError:
        raise BadRequest(_BAD_ARGUMENTS) from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise BadRequest(_BAD_ARGUMENTS)
    out: dict[str, Any] = {"id": call.id} if call.id else {}
    out["function"] = {"name": function.name or "", "arguments": arguments}
    return out


def _tool_name(message: _Message, messages: list[_Message]) -> str:
    """A tool result's tool: its ``name``, else the call its ``tool_call_id`` answers."""
    if (message.role or "").lower() != "tool":
        return ""
    if message.name or not message.tool_call_id:
        return message.name or ""
    for earlier in reversed(messages):  # Ollama's "last one wins" for duplicate ids
        for call in earlier.tool_calls or ():
            if call.id == message.tool_call_id:
                return (call.function or _Function()).name or ""
    return ""


def _stops(stop: str | list[str]) -> list[str]:
    # Ollama silently drops non-string items in a chat `stop` list; we refuse them (the type
    # says list[str]), as OpenAI itself does.
    return [stop] if isinstance(stop, str) else stop


def _chat_options(request: _ChatBody) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if request.stop is not None:
        options["stop"] = _stops(request.stop)
    # Ollama reads only max_tokens; max_completion_tokens (its successor, which newer SDKs
    # send) is honoured too when max_tokens is absent, so Ollama's behaviour is unchanged.
    max_tokens = request.max_tokens if request.max_tokens is not None \
        else request.max_completion_tokens
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    # OpenAI's defaults, not the model's: Ollama sets them so both APIs sample alike.
    options["temperature"] = 1.0 if request.temperature is None else request.temperature
    if request.seed is not None:
        options["seed"] = request.seed
    if request.frequency_penalty is not None:
        options["frequency_penalty"] = request.frequency_penalty
    if request.presence_penalty is not None:
        options["presence_penalty"] = request.presence_penalty
    options["top_p"] = 1.0 if request.top_p is None else request.top_p
    return options


def _completion_options(request: _CompletionBody) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if request.stop is not None:
        options["stop"] = _stops(request.stop)
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    options["temperature"] = 1.0 if request.temperature is None else request.temperature
    if request.seed is not None:
        options["seed"] = request.seed
    # Go's CompletionRequest holds these as plain numbers: always sent, and a top_p of 0
    # cannot be told from "absent", so it becomes 1.
    options["frequency_penalty"] = request.frequency_penalty or 0.0
    options["presence_penalty"] = request.presence_penalty or 0.0
    options["top_p"] = request.top_p or 1.0
    return options


_NO_SCHEMA = (b"", b"null")


def _format(response_format: _ResponseFormat | None) -> str | msgspec.Raw | None:
    if response_format is None:
        return None
    kind = (response_format.type or "").strip().lower()
    if kind == "json_object":
        return "json"
    schema = response_format.json_schema
    if kind == "json_schema" and schema is not None and bytes(schema.schema) not in _NO_SCHEMA:
        return schema.schema
    return None  # "text" and anything else: unconstrained


_EFFORTS = ("high", "medium", "low", "none")


def _think(request: _ChatBody) -> bool | str | None:
    if request.reasoning is not None:
        effort = request.reasoning.effort or ""
    else:
        effort = request.reasoning_effort or ""
    if not effort:
        return None
    if effort not in _EFFORTS:
        raise BadRequest(f"invalid reasoning value: '{effort}' "
                         '(must be "high", "medium", "low", or "none")')
    return False if effort == "none" else effort


def _embed_input(value: Any) -> str | list[str]:
    if value == "":
        return [""]  # as Ollama: one empty input, not none
    if isinstance(value, str):
        return value
    if value is None or value == []:
        raise BadRequest("invalid input: 'input' must be a non-empty string or list of strings")
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    # What Ollama's /api/embed answers for token arrays and other types.
    raise BadRequest("invalid input type: 'input' must be a string or a list of strings "
                     "(token arrays are not supported)")


# --- answers -------------------------------------------------------------------------------


def chat_completion(answer: dict[str, Any], reply: ReplyContext) -> dict[str, Any]:
    """The final ``/api/chat`` object (stream: false) -> a ``chat.completion``."""
    message = answer.get("message") or {}
    tool_calls = _openai_tool_calls(message.get("tool_calls"), 0)
    reason = _done_reason(answer)
    choice: dict[str, Any] = {
        "index": 0,
        "message": _openai_message(message, tool_calls, message.get("role") or "assistant"),
        "finish_reason": "tool_calls" if tool_calls else (reason or None)}
    _add_logprobs(choice, answer)
    return {"id": reply.id, "object": "chat.completion",
            "created": _unix(answer.get("created_at"), reply.created),
            "model": answer.get("model") or reply.model, "system_fingerprint": _FINGERPRINT,
            "choices": [choice], "usage": _usage(answer)}


def text_completion(answer: dict[str, Any], reply: ReplyContext) -> dict[str, Any]:
    """The final ``/api/generate`` object (stream: false) -> a ``text_completion``."""
    return {"id": reply.id, "object": "text_completion",
            "created": _unix(answer.get("created_at"), reply.created),
            "model": answer.get("model") or reply.model, "system_fingerprint": _FINGERPRINT,
            "choices": [_text_choice(answer)], "usage": _usage(answer)}


def embedding_list(answer: dict[str, Any], reply: ReplyContext) -> dict[str, Any]:
    """An ``/api/embed`` answer -> OpenAI's embedding list, as floats or base64.

    Ollama answers a zero object (``"data": null``) when the node sent no embeddings; we
    answer an empty list, which clients can iterate.
    """
    tokens = _int(answer.get("prompt_eval_count"))
    data = [{"object": "embedding", "embedding": _embedding(vector, reply.encoding_format),
             "index": index} for index, vector in enumerate(answer.get("embeddings") or [])]
    return {"object": "list", "data": data, "model": reply.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _embedding(vector: list[float], encoding: str) -> list[float] | str:
    if encoding != "base64":
        return vector
    # Little-endian float32, what the openai client decodes (Ollama: binary.LittleEndian).
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def model_list(tags: dict[str, Any]) -> dict[str, Any]:
    """An ``/api/tags`` answer -> ``GET /v1/models``.

    Ollama answers ``"data": null`` when no model is installed; we answer an empty list,
    which every client can iterate (the Python client accepts both).
    """
    data = [_model(entry.get("name") or entry.get("model") or "", entry.get("modified_at"))
            for entry in tags.get("models") or []]
    return {"object": "list", "data": data}


def model_object(show: dict[str, Any], name: str) -> dict[str, Any]:
    """An ``/api/show`` answer for `name` -> ``GET /v1/models/{name}``."""
    return _model(name, show.get("modified_at"))


def _model(name: str, modified_at: Any) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _unix(modified_at, 0),
            "owned_by": owned_by(name)}


def owned_by(name: str) -> str:
    """The namespace Ollama's ``model.ParseName`` finds: ``jmorgan/m:7b`` -> ``jmorgan``,
    ``hf.co/org/repo:q4`` -> ``org``, ``llama3`` -> ``library``."""
    colon, slash = name.rfind(":"), name.rfind("/")
    if colon > slash:
        name = name[:colon]
    parts = name.split("/")
    return (parts[-2] if len(parts) > 1 else "") or "library"


_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}  # Ollama's NewError


def error_object(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error body, typed as Ollama's ``NewError`` types it."""
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "api_error"),
                      "param": None, "code": None}}


class _EventStream:
    """What chat and completion streams share: framing, the last events, and failure.

    Ollama's writer, fed an ``{"error": ...}`` line mid-stream, decodes it as an empty answer
    and emits an empty chunk, so the client never learns the stream failed. We end with an
    OpenAI error event instead, which the openai client raises as ``APIError``: a failure
    after the first byte must show, never look like a short answer.
    """

    def __init__(self, reply: ReplyContext) -> None:
        self.reply = reply
        self.finished = False

    def chunk(self, ollama_chunk: dict[str, Any]) -> bytes:
        """The events for one Ollama NDJSON chunk; after the last one, nothing."""
        if self.finished:
            return b""
        if ollama_chunk.get("error"):
            return self.error(_error_message(ollama_chunk["error"]))
        chunks = self._chunks(ollama_chunk)
        events = [_event(chunk) for chunk in chunks]
        if ollama_chunk.get("done"):
            self.finished = True
            if self.reply.include_usage:  # the last chunk again, choices emptied, usage set
                events.append(_event({**chunks[-1], "choices": [],
                                      "usage": _usage(ollama_chunk)}))
            events.append(DONE_EVENT)
        return b"".join(events)

    def done(self) -> bytes:
        """What to write when the upstream stream ends: nothing if it ended properly."""
        if self.finished:
            return b""
        return self.error("the node's stream ended before the answer was complete")

    def error(self, message: str, status: int = 500) -> bytes:
        """The error event that ends the stream; no [DONE] follows it, as with OpenAI."""
        if self.finished:
            return b""
        self.finished = True
        return _event(error_object(status, message))

    def _chunks(self, ollama_chunk: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError


class ChatStream(_EventStream):
    """Ollama ``/api/chat`` NDJSON chunks -> ``chat.completion.chunk`` events."""

    def __init__(self, reply: ReplyContext) -> None:
        super().__init__(reply)
        self._tool_call_sent = False
        self._next_tool_index = 0

    def _chunks(self, ollama_chunk: dict[str, Any]) -> list[dict[str, Any]]:
        message = ollama_chunk.get("message") or {}
        tool_calls = _openai_tool_calls(message.get("tool_calls"), self._next_tool_index)
        if tool_calls:
            self._next_tool_index = max(call["index"] for call in tool_calls) + 1
        self._tool_call_sent = self._tool_call_sent or bool(tool_calls)
        choice: dict[str, Any] = {"index": 0,
                                  "delta": _openai_message(message, tool_calls, "assistant"),
                                  "finish_reason": self._finish_reason(ollama_chunk)}
        _add_logprobs(choice, ollama_chunk)
        return [self._envelope(ollama_chunk, each) for each in _split_reasoning(choice)]

    def _finish_reason(self, ollama_chunk: dict[str, Any]) -> str | None:
        """Only the last chunk has one; once a tool call went out, it is "tool_calls"."""
        reason = _done_reason(ollama_chunk)
        if not reason:
            return None
        return "tool_calls" if self._tool_call_sent else reason

    def _envelope(self, ollama_chunk: dict[str, Any], choice: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.reply.id, "object": "chat.completion.chunk",
                "created": self.reply.created, "model": ollama_chunk.get("model") or
                self.reply.model, "system_fingerprint": _FINGERPRINT, "choices": [choice]}


def _split_reasoning(choice: dict[str, Any]) -> list[dict[str, Any]]:
    """Ollama's ToChunks: a chunk with both reasoning and content (or tool calls) goes out as
    a reasoning chunk, then a content chunk that alone carries the finish reason."""
    delta = choice["delta"]
    if "reasoning" not in delta or not (delta["content"] or "tool_calls" in delta):
        return [choice]
    reasoning = {**choice, "finish_reason": None,
                 "delta": {"role": "assistant", "content": "", "reasoning": delta["reasoning"]}}
    content = {key: value for key, value in choice.items() if key != "logprobs"}
    content["delta"] = {key: value for key, value in delta.items() if key != "reasoning"}
    return [reasoning, content]


class CompletionStream(_EventStream):
    """Ollama ``/api/generate`` NDJSON chunks -> ``text_completion`` chunk events."""

    def _chunks(self, ollama_chunk: dict[str, Any]) -> list[dict[str, Any]]:
        chunk: dict[str, Any] = {
            "id": self.reply.id, "object": "text_completion", "created": self.reply.created,
            "choices": [_text_choice(ollama_chunk)],
            "model": ollama_chunk.get("model") or self.reply.model,
            "system_fingerprint": _FINGERPRINT}
        if self.reply.include_usage:
            # Ollama puts zeroed usage on every chunk (OpenAI sends null); harmless to clients.
            chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return [chunk]


def _text_choice(answer: dict[str, Any]) -> dict[str, Any]:
    return {"text": answer.get("response") or "", "index": 0,
            "finish_reason": _done_reason(answer) or None}


def _openai_message(message: dict[str, Any], tool_calls: list[dict[str, Any]],
                    role: str) -> dict[str, Any]:
    out: dict[str, Any] = {"role": role, "content": message.get("content") or ""}
    if message.get("thinking"):
        out["reasoning"] = message["thinking"]  # Ollama's name for it; clients ignore it
    if tool_calls:
        out["tool_calls"] = tool_calls
    return out


def _openai_tool_calls(calls: Any, first_index: int) -> list[dict[str, Any]]:
    """Ollama tool calls -> OpenAI's, arguments as a JSON string.

    Ollama's server numbers calls (``function.index``); a node that does not gets them
    numbered here, from `first_index`, so streamed calls never merge in the client.
    """
    out = []
    for position, call in enumerate(calls or ()):
        function = call.get("function") or {}
        index = function.get("index")
        out.append({"id": call.get("id") or "",
                    "index": index if isinstance(index, int) else first_index + position,
                    "type": "function",
                    "function": {"name": function.get("name") or "",
                                 "arguments": _arguments_text(function.get("arguments"))}})
    return out


def _arguments_text(arguments: Any) -> str:
    # Key order is the node's; Go also escapes <, > and & as \u003c...: the same JSON value.
    if arguments is None:
        return "{}"  # Go's nil map would give "null", which json.loads does not make a dict
    if isinstance(arguments, str):
        return arguments
    return _encode(arguments).decode()


def _add_logprobs(choice: dict[str, Any], answer: dict[str, Any]) -> None:
    if answer.get("logprobs"):
        choice["logprobs"] = {"content": answer["logprobs"]}


def _usage(answer: dict[str, Any]) -> dict[str, int]:
    prompt, completion = _int(answer.get("prompt_eval_count")), _int(answer.get("eval_count"))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _done_reason(answer: dict[str, Any]) -> str:
    reason = answer.get("done_reason")
    return reason if isinstance(reason, str) else ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _unix(timestamp: Any, default: int) -> int:
    """An RFC 3339 time (Ollama's ``created_at``/``modified_at``) as Unix seconds, floored
    like Go's ``Time.Unix``; `default` when it is missing or unreadable."""
    if not isinstance(timestamp, str) or not timestamp:
        return default
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return default
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp())


def _error_message(error: Any) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return str(error)


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + _encode(data) + b"\n\n"
