"""Ollama API request bodies, decoded and validated with msgspec.

Gateway and node share these: the gateway rejects bad input before it reaches a node, the
node hands typed requests to its engine. Unknown fields are ignored (as Ollama does); wrong
types, malformed JSON and a missing ``model`` become `BadRequest` with a clear sentence, and
so do bodies that are not UTF-8, options out of range, unknown roles, images that are not
images and malformed tools (docs/resilience.md, "Bad input"; tests/fuzz checks it).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from ollamamax.errors import BadRequest
from ollamamax.node.residency import DEFAULT_KEEP_ALIVE, FOREVER

Format = str | dict[str, Any] | None
KeepAlive = str | int | float | None
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
Int64 = Annotated[int, Meta(ge=-(2**63), le=INT64_MAX)]  # Go's int: larger JSON numbers are a 400
Count = Annotated[int, Meta(ge=1, le=INT32_MAX)]  # llama.cpp holds these in a C int
Unit = Annotated[float, Meta(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Meta(ge=0.0)]
# What Ollama's chat templates know, and OpenAI's newer name for "system".
ROLES = ("system", "user", "assistant", "tool", "developer")


class Options(msgspec.Struct, omit_defaults=True):
    """Runtime options Ollama knows; the ones that reach llama.cpp are typed and checked.

    Bounds refuse what no engine can honour (a context of -5 tokens, a top_k of -1, numbers
    beyond Go's int64) with a 400 naming the field, before a node or llama.cpp sees them.
    The negative values Ollama gives a meaning keep it: ``num_predict`` -1 (no limit) and -2
    (fill the context), ``repeat_last_n`` and ``num_keep`` -1 (the whole context).
    """

    num_ctx: Count | None = None
    num_batch: Count | None = None
    num_thread: Annotated[int, Meta(ge=0, le=INT32_MAX)] | None = None  # 0: as many as cores
    num_keep: Annotated[int, Meta(ge=-1, le=INT32_MAX)] | None = None
    seed: Int64 | None = None
    num_predict: Annotated[int, Meta(ge=-2, le=INT64_MAX)] | None = None
    top_k: Annotated[int, Meta(ge=0, le=INT32_MAX)] | None = None
    top_p: Unit | None = None
    min_p: Unit | None = None
    typical_p: Unit | None = None
    repeat_last_n: Annotated[int, Meta(ge=-1, le=INT32_MAX)] | None = None
    temperature: NonNegative | None = None
    repeat_penalty: Annotated[float, Meta(gt=0.0)] | None = None  # llama.cpp refuses 0
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    mirostat: Annotated[int, Meta(ge=0, le=2)] | None = None
    mirostat_tau: NonNegative | None = None
    mirostat_eta: NonNegative | None = None
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
    context: list[Int64] | None = None
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
    dimensions: Int64 | None = None
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
    try:  # JSON is UTF-8 (RFC 8259); msgspec would let broken bytes through in unknown fields
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"invalid JSON: the body is not valid UTF-8 (byte {exc.start})") from None
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
    if isinstance(request, ChatRequest):
        _check_messages(request.messages or [])
        _check_shape(request.tools, list[_Tool], "tools")
    elif isinstance(request, GenerateRequest):
        _check_images(request.images, "images")
    return request


def _check_messages(messages: list[Message]) -> None:
    for position, message in enumerate(messages):
        if message.role not in ROLES:
            raise BadRequest(f"invalid role {shown(message.role)} in messages[{position}]: "
                             "expected one of " + ", ".join(ROLES))
        _check_images(message.images, f"messages[{position}].images")
        _check_shape(message.tool_calls, list[_ToolCall], f"messages[{position}].tool_calls")


# Tools and tool calls are forwarded as they came; these shapes are what Ollama's Go types
# accept and what llama.cpp's template code needs (a name that is not a string failed there
# with a 500).
class _Function(msgspec.Struct):
    name: str


class _Tool(msgspec.Struct):
    function: _Function
    type: Literal["function"] = "function"


class _CallFunction(msgspec.Struct):
    name: str
    arguments: dict[str, Any] | None = None


class _ToolCall(msgspec.Struct):
    function: _CallFunction


def _check_shape(value: Any, shape: Any, where: str) -> None:
    if value is None:
        return
    try:
        msgspec.convert(value, shape)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid {where}: {exc}") from None


# The formats vision models decode (Ollama's image input), by their first bytes.
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")


def _check_images(images: list[bytes] | None, where: str) -> None:
    """msgspec checked the base64; a payload that is not an image would fail in the engine."""
    for position, image in enumerate(images or ()):
        webp = image[:4] == b"RIFF" and image[8:12] == b"WEBP"
        if not (image.startswith(_IMAGE_MAGIC) or webp):
            raise BadRequest(f"invalid image input: {where}[{position}] is not a PNG, JPEG, WebP "
                             "or GIF image")


def shown(value: object, limit: int = 80) -> str:
    """`value` quoted for an error message, cut short: a bad field may be a megabyte long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def wants_stream(request: ChatRequest | GenerateRequest) -> bool:
    return request.stream is not False


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_SECONDS = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")  # not "inf", "nan", "1_0"
# Go's time.Duration (int64 nanoseconds) ends after ~292 years: Ollama refuses a longer one.
MAX_KEEP_ALIVE = (2**63 - 1) / 1e9
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
    if seconds > MAX_KEEP_ALIVE:
        raise BadRequest(f"keep_alive {shown(value)} is longer than the longest duration "
                         "(2562047h); a negative keep_alive keeps the model loaded forever")
    return FOREVER if seconds < 0 else seconds


def _parse_duration(text: str) -> float:
    raw = text.strip()
    sign = -1.0 if raw.startswith("-") else 1.0
    body = raw.lstrip("+-")
    if _SECONDS.fullmatch(body):
        return sign * float(body)  # Ollama accepts bare numbers as seconds
    pos, total = 0, 0.0
    for match in _DURATION.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(body) or not body:
        raise BadRequest(f"invalid keep_alive duration {shown(text)}")
    return sign * total
