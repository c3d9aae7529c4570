"""Ollama API request bodies, decoded and validated with msgspec.

Gateway and node share these: the gateway rejects bad input before it reaches a node, the
node hands typed requests to its engine. Unknown fields are ignored (as Ollama does); wrong
types, malformed JSON and a missing ``model`` become `BadRequest` with a clear sentence.
"""

from __future__ import annotations

import math
import re
from typing import Any, TypeVar

import msgspec

from ollamamax.errors import BadRequest
from ollamamax.node.residency import DEFAULT_KEEP_ALIVE, FOREVER

Format = str | dict[str, Any] | None
KeepAlive = str | int | float | None


class Options(msgspec.Struct, omit_defaults=True):
    """Runtime options Ollama knows; the ones that reach llama.cpp are typed and checked."""

    num_ctx: int | None = None
    num_batch: int | None = None
    num_thread: int | None = None
    num_keep: int | None = None
    seed: int | None = None
    num_predict: int | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_last_n: int | None = None
    temperature: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    stop: list[str] | str | None = None


class Message(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | None = ""
    images: list[bytes] | None = None  # base64 on the wire; msgspec checks the encoding
    tool_calls: list[dict[str, Any]] | None = None
    thinking: str | None = None
    tool_name: str | None = None


class _ModelRequest(msgspec.Struct, omit_defaults=True):
    model: str | None = None
    name: str | None = None  # older clients send "name" (Ollama still accepts it)

    @property
    def model_name(self) -> str:
        return self.model or self.name or ""


class ChatRequest(_ModelRequest):
    messages: list[Message] | None = None
    stream: bool | None = None
    format: Format = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    tools: list[dict[str, Any]] | None = None
    think: bool | str | None = None


class GenerateRequest(_ModelRequest):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[bytes] | None = None
    stream: bool | None = None
    raw: bool | None = None
    format: Format = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    think: bool | str | None = None


class EmbedRequest(_ModelRequest):
    input: str | list[str] | None = None
    truncate: bool | None = None
    dimensions: int | None = None
    options: Options | None = None
    keep_alive: KeepAlive = None

    @property
    def inputs(self) -> list[str]:
        if self.input is None:
            return []
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingsRequest(_ModelRequest):
    """The legacy ``/api/embeddings`` body."""

    prompt: str | None = None
    options: Options | None = None
    keep_alive: KeepAlive = None


class ShowRequest(_ModelRequest):
    verbose: bool | None = None


R = TypeVar("R", bound=_ModelRequest)
T = TypeVar("T")
_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {}


def decode_body(body: bytes, kind: type[T]) -> T:
    """A JSON body as `kind` (Ollama's or OpenAI's); `BadRequest` saying what is wrong."""
    if not body or not body.strip():
        raise BadRequest("missing request body")
    decoder = _DECODERS.get(kind)
    if decoder is None:
        decoder = _DECODERS[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(body)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None


def decode(body: bytes, kind: type[R]) -> R:
    """Decode and validate an Ollama request body; `BadRequest` with a reason otherwise."""
    request = decode_body(body, kind)
    if not request.model_name:
        raise BadRequest("model is required")
    if (isinstance(request, EmbedRequest) and request.dimensions is not None
            and request.dimensions <= 0):
        raise BadRequest("dimensions must be a positive number")
    if hasattr(request, "keep_alive"):
        keep_alive_seconds(request.keep_alive)  # validate early
    return request


def wants_stream(request: ChatRequest | GenerateRequest) -> bool:
    return request.stream is not False


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: KeepAlive, default: float = DEFAULT_KEEP_ALIVE) -> float:
    """Ollama's keep_alive: a Go duration (``"5m"``, ``"1h30m"``) or seconds; negative = forever."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise BadRequest("keep_alive must be a duration string or a number of seconds")
    seconds = float(value) if isinstance(value, int | float) else _parse_duration(value)
    if math.isnan(seconds):
        raise BadRequest(f"invalid keep_alive {value!r}")
    return FOREVER if seconds < 0 else seconds


def _parse_duration(text: str) -> float:
    raw = text.strip()
    sign = -1.0 if raw.startswith("-") else 1.0
    body = raw.lstrip("+-")
    try:
        return sign * float(body)  # Ollama accepts bare numbers as seconds
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(body) or not body:
        raise BadRequest(f"invalid keep_alive duration {text!r}")
    return sign * total
