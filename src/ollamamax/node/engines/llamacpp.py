"""The ``llamacpp`` engine: llama.cpp embedded in the node process through the ``xllamacpp`` wheel.

Each loaded model is one ``xllamacpp.Server`` (llama.cpp's own server, with ``num_parallel``
slots of ``num_ctx`` tokens each). It is created with embeddings on and mean pooling, so one
server answers chat, completion and embedding requests. Its ``handle_*`` calls block (and
release the GIL): they run on a thread pool owned by the engine, and streamed chunks cross to
the event loop through an `asyncio.Queue`. Returning True from the chunk callback makes
llama.cpp stop generating, which is how a client that went away frees its slot.

Requests arrive in Ollama's shape and are translated to llama.cpp's OpenAI-shaped API;
answers are translated back to Ollama's chunks. Ollama's residency rules (slots, queue,
eviction, keep-alive) come from `ResidentEngine`.

Measured with the pinned build: llama.cpp rounds a context up to a multiple of 256 tokens
(answers still stop at ``num_ctx`` tokens), and an embedding input must fit in one physical
batch (512 tokens, or ``num_ctx`` when smaller); longer inputs are truncated to it. A bigger
batch would allow longer inputs but costs memory on every loaded model (~0.8 GB more for
SmolLM2 at 4,096).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import xllamacpp

from ollamamax.api.ollama_types import (
    ChatRequest,
    EmbedRequest,
    Format,
    GenerateRequest,
    Message,
    Options,
)
from ollamamax.config import NodeConfig
from ollamamax.errors import (
    BadRequest,
    EngineError,
    EngineOverloaded,
    ModelNotFound,
    OllamaMaxError,
)
from ollamamax.models import gguf_meta
from ollamamax.models.store import LocalModel
from ollamamax.node.engines.base import Chunk, Stopwatch, created_at, ns
from ollamamax.node.engines.resident import ResidentEngine

log = logging.getLogger(__name__)

# Ollama options passed to llama.cpp under the same name.
SAMPLING_OPTIONS = (
    "temperature", "top_p", "top_k", "min_p", "typical_p", "seed", "repeat_penalty",
    "repeat_last_n", "presence_penalty", "frequency_penalty", "mirostat", "mirostat_tau",
    "mirostat_eta",
)
# llama.cpp keeps evicted slot states in RAM for prefix reuse; its default (8 GiB per model)
# is too much for a node that keeps several models loaded.
CACHE_RAM_MIB = 256
_TRUNCATE_ATTEMPTS = 4
_TOO_LARGE = re.compile(r"input \((\d+) tokens\).*batch size: (\d+)")
_END = object()  # posted to a call's queue when the blocking call has returned


class _Loaded:
    """A loaded model: its llama.cpp server and the calls running on it."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.calls: set[_Call] = set()


class _Call:
    """One blocking ``handle_*`` call on the engine's pool, its chunks bridged to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.stopped = False  # set on the loop, read by the worker thread (a plain bool is enough)
        self.unloaded = False
        self.future: concurrent.futures.Future[Any] | None = None

    def on_chunk(self, chunk: dict[str, Any]) -> bool:
        """llama.cpp's stream callback, in the worker thread: True stops generating."""
        if self.stopped:
            return True
        return not self._post(chunk) or self.stopped

    def on_done(self, _future: concurrent.futures.Future[Any]) -> None:
        self._post(_END)

    def _post(self, item: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody will read this
            return False
        return True


class LlamaCppEngine(ResidentEngine):
    name = "llamacpp"

    def __init__(self, config: NodeConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, clock)
        # Every slot of every loaded model may block a thread at once, and loads and unloads
        # need theirs; the loop's default pool (6 threads on 2 cores) would queue them.
        workers = config.max_loaded * (config.num_parallel + 1) + 2
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="llamacpp")

    async def close(self) -> None:
        await super().close()
        await asyncio.to_thread(self._pool.shutdown, True)

    # -- loading ---------------------------------------------------------------------------

    async def _load(self, model: str) -> _Loaded:
        local = self.local_model(model)
        path = self.store.model_file(local)
        if not path.is_file():
            raise ModelNotFound(local.name.short)
        info = await asyncio.to_thread(gguf_meta.read, path)
        params = self._params(path, info)
        loop = asyncio.get_running_loop()
        try:
            server = await loop.run_in_executor(self._pool, xllamacpp.Server, params)
        except RuntimeError as exc:  # xllamacpp says only "Failed to init server"
            raise EngineError(f"llama.cpp could not load {local.name.short}: {exc}") from None
        return _Loaded(server)

    async def _unload(self, model: str, handle: _Loaded) -> None:
        calls = list(handle.calls)
        for call in calls:
            call.stopped = call.unloaded = True
        futures = [asyncio.wrap_future(c.future) for c in calls if c.future is not None]
        await asyncio.gather(*futures, return_exceptions=True)
        # Drop the last reference on a worker: freeing the model blocks for a moment.
        await asyncio.get_running_loop().run_in_executor(self._pool, _free, handle)

    def _params(self, path: Path, info: gguf_meta.GGUFInfo) -> Any:
        cfg = self.config
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = cfg.num_ctx * cfg.num_parallel  # llama.cpp splits it between the slots
        params.n_parallel = cfg.num_parallel
        params.cpuparams.n_threads = cfg.threads
        params.cpuparams_batch.n_threads = cfg.threads
        params.verbosity = -1
        params.embedding = True
        params.pooling_type = _pooling(info)
        params.use_jinja = True
        # No fixed default seed: like Ollama, a request without one samples afresh each time.
        params.ctx_shift = False  # a generation ends at the end of its slot's context
        params.cache_ram_mib = CACHE_RAM_MIB
        # xllamacpp always listens on 127.0.0.1 (a random port); a secret nobody knows
        # keeps other local processes off the model.
        params.api_keys = [secrets.token_urlsafe(32)]
        return params

    # -- chat and generate -----------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        model = self.local_model(request.model_name)
        answer = _Answer(request.model_name, "message")
        if not request.messages:
            yield answer.load(await self.load_only(model, request.keep_alive))
            return
        if any(m.images for m in request.messages):
            raise BadRequest("model does not support images")
        body: dict[str, Any] = {"messages": [_message(m) for m in request.messages]}
        if request.tools:
            body["tools"] = request.tools
        body.update(self._sampling(request.options, request.format, request.think))
        generation = self._generation(model, request.keep_alive, answer,
                                      "handle_chat_completions", body)
        async with contextlib.aclosing(generation) as chunks:  # closing us closes it now
            async for chunk in chunks:
                yield chunk

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        model = self.local_model(request.model_name)
        answer = _Answer(request.model_name, "response")
        if request.suffix:
            raise BadRequest("model does not support insert")
        if request.images:
            raise BadRequest("model does not support images")
        if not request.prompt:
            yield answer.load(await self.load_only(model, request.keep_alive))
            return
        if request.raw:
            method, body = "handle_completions", {"prompt": request.prompt}
        else:
            messages = [{"role": "system", "content": request.system}] if request.system else []
            messages.append({"role": "user", "content": request.prompt})
            method, body = "handle_chat_completions", {"messages": messages}
        body.update(self._sampling(request.options, request.format, request.think))
        generation = self._generation(model, request.keep_alive, answer, method, body)
        async with contextlib.aclosing(generation) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _generation(self, model: LocalModel, keep_alive: Any, answer: _Answer,
                          method: str, body: dict[str, Any]) -> AsyncIterator[Chunk]:
        watch = Stopwatch()
        reply = _Reply()
        async with self.runner(model, keep_alive) as loaded:
            watch.mark_loaded()
            async with contextlib.aclosing(self._stream(loaded, method, body)) as chunks:
                async for raw in chunks:
                    content, thinking = reply.add(raw)
                    if content or thinking:
                        if reply.pieces == 0:
                            watch.mark_first_token()
                        reply.pieces += 1
                        yield answer.partial(content, thinking)
        if reply.tools.calls:
            yield answer.tool_calls(reply.tools.ollama())
        yield answer.final(reply.done_reason, reply.stats(watch))

    def _sampling(self, options: Options | None, fmt: Format, think: Any) -> dict[str, Any]:
        """llama.cpp request fields for Ollama's options, format and think."""
        fields: dict[str, Any] = {"max_tokens": self._max_tokens(options)}
        if options is not None:
            fields.update({k: v for k in SAMPLING_OPTIONS
                           if (v := getattr(options, k)) is not None})
            if options.repeat_last_n == -1:  # Ollama's "the whole context"; llama.cpp says 400
                fields["repeat_last_n"] = self.config.num_ctx
            if options.stop:
                fields["stop"] = [options.stop] if isinstance(options.stop, str) else options.stop
        schema = _json_schema(fmt)
        if schema is not None:
            fields["json_schema"] = schema
        if think is not None:
            fields["chat_template_kwargs"] = {"enable_thinking": bool(think)}
        return fields

    def _max_tokens(self, options: Options | None) -> int:
        """Ollama's num_predict, at most the context (-1, -2 or absent: the context)."""
        context = self.config.num_ctx
        requested = options.num_ctx if options is not None else None
        if requested and requested < context:
            context = requested
        elif requested and requested > context:
            # The slot size is fixed when the model loads. Reloading for one request's
            # num_ctx would make requests with different values evict each other (Ollama's
            # reload storm); a bigger context than configured is not served.
            log.debug("num_ctx %d ignored: slots hold %d tokens", requested, context)
        wanted = options.num_predict if options is not None else None
        return min(wanted, context) if wanted and wanted > 0 else context

    # -- embeddings ------------------------------------------------------------------------

    async def embed(self, request: EmbedRequest) -> dict[str, Any]:
        model = self.local_model(request.model_name)
        inputs = request.inputs
        watch = Stopwatch()
        async with self.runner(model, request.keep_alive) as loaded:
            watch.mark_loaded()
            if not inputs:
                return {"model": request.model_name, "embeddings": []}
            vectors, tokens = await self._embeddings(loaded, inputs, request.truncate)
        stats = watch.stats(tokens, 0)
        return {
            "model": request.model_name,
            "embeddings": _normalised(vectors, request.dimensions),
            "total_duration": stats["total_duration"],
            "load_duration": stats["load_duration"],
            "prompt_eval_count": tokens,
        }

    async def _embeddings(self, loaded: _Loaded, inputs: list[str],
                          truncate: bool | None) -> tuple[list[list[float]], int]:
        result = await self._once(loaded, "handle_embeddings", {"input": inputs})
        error = result.get("error")
        if error is None:
            return _vectors(result)
        if _overflow(error) is None:
            raise _error(error)
        if truncate is False:
            raise BadRequest("input exceeds maximum context length")
        vectors, tokens = [], 0
        for text in inputs:
            vector, count = await self._embed_truncated(loaded, text)
            vectors.append(vector)
            tokens += count
        return vectors, tokens

    async def _embed_truncated(self, loaded: _Loaded, text: str) -> tuple[list[float], int]:
        """Embed `text`, cutting it until it fits (Ollama's ``truncate: true``).

        xllamacpp offers no tokenizer call and llama.cpp does not truncate embedding inputs,
        but its error says how many tokens the input has and how many fit: cut the text in
        that ratio, with a margin, and try again. Only inputs that overflow pay for this.
        """
        for _ in range(_TRUNCATE_ATTEMPTS):
            result = await self._once(loaded, "handle_embeddings", {"input": [text]})
            error = result.get("error")
            if error is None:
                vectors, tokens = _vectors(result)
                return vectors[0], tokens
            overflow = _overflow(error)
            if overflow is None:
                raise _error(error)
            tokens, limit = overflow
            text = text[: max(1, int(len(text) * limit / tokens * 0.9))]
        raise EngineError("could not truncate the input to the context length")

    # -- calls into llama.cpp --------------------------------------------------------------

    async def _stream(self, loaded: _Loaded, method: str,
                      body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The raw chunks of a streamed call; closing the generator stops llama.cpp."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        call = self._start(loaded, method, body, stream=True)
        try:
            while (chunk := await call.queue.get()) is not _END:
                if "error" in chunk:
                    raise _error(chunk["error"])
                yield chunk
            _check(call)
        finally:
            call.stopped = True
            await self._settle(loaded, call)

    async def _once(self, loaded: _Loaded, method: str, body: dict[str, Any]) -> dict[str, Any]:
        call = self._start(loaded, method, body, stream=False)
        try:
            await call.queue.get()
            return _check(call) or {}
        finally:
            await self._settle(loaded, call)

    def _start(self, loaded: _Loaded, method: str, body: dict[str, Any], stream: bool) -> _Call:
        call = _Call(asyncio.get_running_loop())
        handler = getattr(loaded.server, method)
        args = (body, call.on_chunk) if stream else (body,)
        call.future = self._pool.submit(handler, *args)
        call.future.add_done_callback(call.on_done)
        loaded.calls.add(call)
        return call

    async def _settle(self, loaded: _Loaded, call: _Call) -> None:
        """Wait until llama.cpp has returned, so the slot is free before the runner is."""
        assert call.future is not None
        with contextlib.suppress(Exception):  # its error was reported already, or nobody listens
            await asyncio.wrap_future(call.future)
        # Not reached when cancelled while waiting: the call stays listed for `_unload`.
        loaded.calls.discard(call)


# -- Ollama's answers ----------------------------------------------------------------------


class _Answer:
    """Builds Ollama chunks for chat (``message``) or generate (``response``)."""

    def __init__(self, model: str, kind: str) -> None:
        self.model = model
        self.kind = kind

    def partial(self, content: str, thinking: str = "") -> Chunk:
        return self._chunk(content, thinking, done=False)

    def tool_calls(self, calls: list[dict[str, Any]]) -> Chunk:
        chunk = self._chunk("", "", done=False)
        chunk["message"]["tool_calls"] = calls
        return chunk

    def final(self, reason: str, stats: dict[str, int]) -> Chunk:
        return {**self._chunk("", "", done=True), "done_reason": reason, **stats}

    def load(self, reason: str) -> Chunk:
        """The answer to Ollama's empty request: ``load`` or ``unload``."""
        return {**self._chunk("", "", done=True), "done_reason": reason}

    def _chunk(self, content: str, thinking: str, done: bool) -> Chunk:
        chunk: Chunk = {"model": self.model, "created_at": created_at()}
        if self.kind == "message":
            message = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            chunk["message"] = message
        else:
            chunk["response"] = content
            if thinking:
                chunk["thinking"] = thinking
        chunk["done"] = done
        return chunk


class _Reply:
    """What llama.cpp's OpenAI-shaped chunks said: text pieces, finish reason, usage, timings."""

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.timings: dict[str, Any] = {}
        self.tools = ToolCalls()
        self.pieces = 0

    def add(self, chunk: dict[str, Any]) -> tuple[str, str]:
        """Take one chunk; return its content and thinking text."""
        self.usage = chunk.get("usage") or self.usage
        self.timings = chunk.get("timings") or self.timings
        choices = chunk.get("choices") or ()
        if not choices:
            return "", ""
        choice = choices[0]
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        delta = choice.get("delta")
        if delta is None:  # a completion chunk
            return choice.get("text") or "", ""
        self.tools.add(delta.get("tool_calls"))
        return delta.get("content") or "", delta.get("reasoning_content") or ""

    @property
    def done_reason(self) -> str:
        return "length" if self.finish_reason == "length" else "stop"

    def stats(self, watch: Stopwatch) -> dict[str, int]:
        """Ollama's statistics; llama.cpp's own timings replace the stopwatch where given."""
        timings = self.timings
        prompt = self.usage.get("prompt_tokens",
                                timings.get("prompt_n", 0) + timings.get("cache_n", 0))
        output = self.usage.get("completion_tokens", timings.get("predicted_n", self.pieces))
        stats = watch.stats(int(prompt), int(output))
        if "prompt_ms" in timings:
            stats["prompt_eval_duration"] = ns(timings["prompt_ms"] / 1e3)
        if "predicted_ms" in timings:
            stats["eval_duration"] = ns(timings["predicted_ms"] / 1e3)
        return stats


class ToolCalls:
    """OpenAI tool-call deltas (streamed in pieces by index) gathered into Ollama's shape."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, str]] = {}

    def add(self, deltas: list[dict[str, Any]] | None) -> None:
        for position, delta in enumerate(deltas or ()):
            empty = {"name": "", "arguments": ""}
            call = self.calls.setdefault(delta.get("index", position), empty)
            function = delta.get("function") or {}
            call["name"] += function.get("name") or ""
            arguments = function.get("arguments") or ""
            call["arguments"] += arguments if isinstance(arguments, str) else json.dumps(arguments)

    def ollama(self) -> list[dict[str, Any]]:
        """``[{"function": {"name": ..., "arguments": {...}}}]`` in index order."""
        return [
            {"function": {"name": call["name"], "arguments": _arguments(call["arguments"])}}
            for _, call in sorted(self.calls.items())
        ]


# -- translation helpers -------------------------------------------------------------------


def _message(message: Message) -> dict[str, Any]:
    """An Ollama chat message as llama.cpp's OpenAI-shaped message."""
    out: dict[str, Any] = {"role": message.role, "content": message.content or ""}
    if message.thinking:
        out["reasoning_content"] = message.thinking
    if message.tool_calls:
        out["tool_calls"] = [_openai_tool_call(i, c) for i, c in enumerate(message.tool_calls)]
    if message.tool_name:
        out["name"] = message.tool_name
    return out


def _openai_tool_call(index: int, call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments", {})
    return {
        "id": call.get("id") or f"call_{index}",
        "type": "function",
        "function": {
            "name": function.get("name", ""),
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


def _arguments(text: str) -> Any:
    """Ollama sends tool arguments as an object; keep the text when it is not JSON."""
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text


def _json_schema(fmt: Format) -> dict[str, Any] | None:
    """The schema llama.cpp constrains output to. Its ``json_schema`` field works for chat
    and raw completions alike (``response_format`` is ignored by completions); ``"json"``
    is an object, like Ollama's JSON grammar."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "object"}
    if isinstance(fmt, dict):
        return fmt
    raise BadRequest('invalid format: expected "json" or a valid JSON schema')


def _pooling(info: gguf_meta.GGUFInfo) -> Any:
    """Mean pooling, unless the model says how it pools (then llama.cpp reads it itself)."""
    types = xllamacpp.llama_pooling_type
    if f"{info.architecture}.pooling_type" in info.metadata:
        return types.LLAMA_POOLING_TYPE_UNSPECIFIED
    return types.LLAMA_POOLING_TYPE_MEAN


def _vectors(result: dict[str, Any]) -> tuple[list[list[float]], int]:
    data = sorted(result.get("data") or (), key=lambda d: d.get("index", 0))
    return [d["embedding"] for d in data], int((result.get("usage") or {}).get("prompt_tokens", 0))


def _normalised(vectors: list[list[float]], dimensions: int | None) -> list[list[float]]:
    """Unit vectors, as Ollama returns; `dimensions` truncates first (then renormalises)."""
    out = []
    for vector in vectors:
        v = np.asarray(vector, dtype=np.float32)
        if dimensions and dimensions < v.size:
            v = v[:dimensions]
        norm = float(np.linalg.norm(v))
        out.append((v / norm if norm > 0 else v).tolist())
    return out


def _overflow(error: dict[str, Any]) -> tuple[int, int] | None:
    """``(input tokens, tokens that fit)`` when llama.cpp refused an input as too long."""
    if "n_prompt_tokens" in error and "n_ctx" in error:
        return int(error["n_prompt_tokens"]), int(error["n_ctx"])
    match = _TOO_LARGE.search(str(error.get("message", "")))
    return (int(match[1]), int(match[2])) if match else None


def _check(call: _Call) -> Any:
    """The result of a finished call (error dicts are the caller's), or the error it raised."""
    assert call.future is not None
    if call.unloaded:
        raise EngineError("generation stopped: the model was unloaded")
    try:
        result = call.future.result()
    except ValueError as exc:  # xllamacpp validates request bodies with ValueError
        raise BadRequest(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - whatever llama.cpp raised fails this request only
        raise EngineError(f"llama.cpp: {exc}") from None
    return result


def _error(error: dict[str, Any]) -> OllamaMaxError:
    """An xllamacpp error dict (``{code, message, type}``) as an Ollama-facing error."""
    message = str(error.get("message") or "llama.cpp error")
    code = error.get("code")
    if code in (400, 501):
        return BadRequest(message)
    if code == 503:
        return EngineOverloaded(message)
    return EngineError(message)


def _free(handle: _Loaded) -> None:
    handle.server = None  # the last reference: llama.cpp stops its threads and frees the model
