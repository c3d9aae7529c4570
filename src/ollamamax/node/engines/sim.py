"""The ``sim`` engine: answers exactly like Ollama, with timing from a named profile.

Slots, the queue and its 503, the number of resident models, eviction and keep-alive come
from `ResidentEngine` (Ollama's own rules, shared with the real engines). This module adds
what a model would cost (`ollamamax.sim.timing`) and what it would say: deterministic
pseudo-words, one chunk per token, and Ollama's statistics.

Durations in the answers are the modelled ones (the same request reports the same
durations); waiting for a slot or a load is measured and scaled by ``sim_speed``, which
compresses every modelled sleep (``sim_speed = 10`` runs 10x faster). Client keep-alives
are not compressed: they are the client's wall-clock policy.

Each resident model keeps its own prefix cache of ``num_ctx x num_parallel`` tokens, as a
runner's KV cache does, and loses it when the model is unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np

from ollamamax.api.ollama_types import (
    ChatRequest,
    EmbedRequest,
    GenerateRequest,
    Options,
    ShowRequest,
)
from ollamamax.config import NodeConfig
from ollamamax.errors import BadRequest, ConfigError, ModelNotFound
from ollamamax.models import names
from ollamamax.models.gguf_meta import GGUFInfo
from ollamamax.models.store import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MODEL_MEDIA_TYPE,
    LocalModel,
)
from ollamamax.node.engines.base import Chunk, created_at, ns
from ollamamax.node.engines.resident import ResidentEngine
from ollamamax.sim import timing

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Body = Callable[[str], dict[str, Any]]

YIELD_EVERY = 32  # chunks made without sleeping before the event loop gets a turn
BITS_PER_WEIGHT = 4.5  # about Q4_K_M: turns a synthetic model's size into parameters
SYNTHETIC_CONTEXT = 131072  # what a Llama-3.1-class model reports as its context length
_SYLLABLES = ("ka", "lo", "mi", "ren", "sa", "to", "vel", "dor", "na", "qui", "ber", "tas",
              "el", "on", "ar", "is", "un", "pe", "gra", "ti")
_WORD_BITS = 9


def _vocabulary() -> tuple[str, ...]:
    """A fixed table of made-up words, so a token costs one random draw."""
    rng = random.Random(0)
    return tuple("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))
                 for _ in range(1 << _WORD_BITS))


_WORDS = _vocabulary()


@dataclass(slots=True)
class SimRunner:
    """A simulated resident model; its prefix cache lives and dies with it."""

    model: str
    cache: timing.PrefixCache


class Pacer:
    """Sleeps until modelled deadlines, so a busy event loop's lag does not pile up over a
    long stream, and lets the loop turn now and then when there is nothing to sleep."""

    __slots__ = ("clock", "due", "sleep", "speed", "unslept")

    def __init__(self, clock: Callable[[], float], sleep: Sleep, speed: float) -> None:
        self.clock, self.sleep, self.speed = clock, sleep, speed
        self.due = clock()
        self.unslept = 0

    async def wait(self, seconds: float) -> None:
        if seconds > 0:
            self.due += seconds / self.speed
            delay = self.due - self.clock()
            if delay > 0:
                self.unslept = 0
                await self.sleep(delay)
                return
        self.unslept += 1
        if self.unslept >= YIELD_EVERY:
            self.unslept = 0
            await asyncio.sleep(0)  # a turn for others, not a modelled wait


@dataclass(slots=True)
class Spent:
    """Where one request's (modelled) time went, for Ollama's statistics."""

    waited: float = 0.0  # queue and load: Ollama's load_duration
    prefill: float = 0.0
    decode: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0

    def stats(self) -> dict[str, int]:
        out = {
            "total_duration": ns(self.waited + self.prefill + self.decode),
            "load_duration": ns(self.waited),
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": ns(self.prefill),
            "eval_count": self.output_tokens,
            "eval_duration": ns(self.decode),
        }
        if self.cached_tokens:
            out["prompt_eval_cached_count"] = self.cached_tokens
        return out


class SimEngine(ResidentEngine):
    name = "sim"

    def __init__(self, config: NodeConfig, clock: Callable[[], float] = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        super().__init__(config, clock)
        self.profile = timing.get_profile(config.sim_profile).sized(config.num_parallel)
        self.sleep = sleep
        self.speed = config.sim_speed
        self.synthetic = synthetic_models(config.sim_models, datetime.now(UTC))
        self.sequences = 0  # prefilling, decoding or embedding now, over all models
        self.cache_blocks = config.num_ctx * config.num_parallel // timing.BLOCK_TOKENS

    # -- models ----------------------------------------------------------------------------

    def local_model(self, name: str) -> LocalModel:
        model = self.synthetic.get(names.model_key(name))
        return model if model is not None else super().local_model(name)

    async def tags(self) -> list[dict[str, Any]]:
        stored = [entry for entry in await super().tags()
                  if names.model_key(entry["name"]) not in self.synthetic]
        entries = stored + [m.tag_entry() for m in self.synthetic.values()]
        return sorted(entries, key=lambda e: e["name"].lower())

    async def ps(self) -> list[dict[str, Any]]:
        entries = await super().ps()
        if self.profile.gpu:
            for entry in entries:
                entry["size_vram"] = entry["size"]
        return entries

    async def show(self, request: ShowRequest) -> dict[str, Any]:
        model = self.local_model(request.model_name)
        if model.name.key not in self.synthetic:
            # A simulated fleet may store placeholder blobs that are not GGUF files.
            with contextlib.suppress(BadRequest, ModelNotFound):
                return await super().show(request)
        return simulated_show(model, self.profile)

    # -- Ollama's model creation API (/api/blobs/:digest, /api/create with files) ----------

    async def has_blob(self, digest: str) -> bool:
        return self.store.has_blob(digest)

    async def receive_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> int:
        """Keep an uploaded blob once it hashes to `digest` (`BadRequest` otherwise)."""
        from ollamamax.sync.install import receive_blob

        return await receive_blob(self.store, digest, chunks)

    async def create(self, name: str, files: dict[str, str]) -> list[dict[str, str]]:
        """A model from an uploaded GGUF blob; the status lines Ollama streams."""
        from ollamamax.sync.install import create_from_files, create_statuses

        model = await asyncio.to_thread(create_from_files, self.store, name, files)
        log.info("created %s from %s", model.name.short, ", ".join(files.values()))
        return create_statuses(model)

    async def _load(self, model: str) -> SimRunner:
        size = self.local_model(model).size
        await self._pause(timing.load_time(self.profile, size))
        return SimRunner(model, timing.PrefixCache(self.cache_blocks))

    async def _unload(self, model: str, handle: SimRunner) -> None:
        handle.cache.clear()
        log.debug("unloaded simulated %s", model)

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            await self.sleep(seconds / self.speed)

    # -- inference -------------------------------------------------------------------------

    def chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        prompt = render_chat(request) if request.messages else ""
        return self._complete(request, prompt, chat_body)

    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        return self._complete(request, render_generate(request), generate_body)

    async def _complete(self, request: ChatRequest | GenerateRequest, prompt: str,
                        body: Body) -> AsyncIterator[Chunk]:
        model = self.local_model(request.model_name)  # ModelNotFound before any chunk
        name = request.model_name
        if not prompt:
            reason = await self.load_only(model, request.keep_alive)
            yield final_chunk(name, body, reason)
            return
        options = request.options or Options()
        rng = random.Random(timing.stable_seed(self.config.seed, options.seed, prompt))
        spent = Spent(prompt_tokens=timing.estimate_tokens(prompt))
        count, reason = timing.output_length(
            self.profile, rng, self._limit(options, spent.prompt_tokens))
        asked = self.clock()
        async with self.runner(model, request.keep_alive) as runner:
            spent.waited = (self.clock() - asked) * self.speed
            self.sequences += 1
            try:
                pacer = Pacer(self.clock, self.sleep, self.speed)
                await self._prefill(runner, prompt, spent, pacer)
                for index in range(count):
                    if index:
                        step = timing.time_between_tokens(self.profile, self.sequences)
                        spent.decode += step
                        await pacer.wait(step)
                    spent.output_tokens += 1
                    yield {"model": name, "created_at": created_at(),
                           **body(token_text(rng, index)), "done": False}
            finally:
                self.sequences -= 1
        # Out of the runner: the slot is free before the client reads the last chunk.
        yield final_chunk(name, body, reason, spent.stats())

    async def _prefill(self, runner: SimRunner, prompt: str, spent: Spent, pacer: Pacer) -> None:
        blocks = timing.prompt_blocks(prompt)
        # At least the last prompt token is evaluated: its logits give the first token.
        cached = min(runner.cache.match(blocks) * timing.BLOCK_TOKENS, spent.prompt_tokens - 1)
        spent.cached_tokens = cached
        spent.prefill = timing.ttft(self.profile, spent.prompt_tokens - cached, self.sequences)
        await pacer.wait(spent.prefill)
        runner.cache.insert(blocks)

    def _limit(self, options: Options, prompt_tokens: int) -> int | None:
        """Ollama's num_predict: -1 (or unset) is no limit, -2 fills the context, and never
        more than 10 contexts (Ollama's cap: a num_predict of 2**62 must not run forever)."""
        limit = options.num_predict
        if limit == -2:
            return max(self.config.num_ctx - prompt_tokens, 0)
        if limit is None or limit < 0:
            return None
        return min(limit, 10 * self.config.num_ctx)

    # -- embeddings ------------------------------------------------------------------------

    async def embed(self, request: EmbedRequest) -> dict[str, Any]:
        model = self.local_model(request.model_name)
        inputs = [text[: self.config.num_ctx * timing.CHARS_PER_TOKEN]
                  for text in self._checked_inputs(request)]
        if not inputs:
            await self.load_only(model, request.keep_alive)
            return {"model": request.model_name, "embeddings": []}
        tokens = sum(timing.estimate_tokens(text) for text in inputs)
        asked = self.clock()
        async with self.runner(model, request.keep_alive):
            waited = (self.clock() - asked) * self.speed
            work = timing.embed_time(self.profile, tokens)
            self.sequences += 1
            try:
                await Pacer(self.clock, self.sleep, self.speed).wait(work)
            finally:
                self.sequences -= 1
        dim = self.profile.embedding_dim
        vectors = [embedding(model.name.key, text, dim, request.dimensions) for text in inputs]
        return {"model": request.model_name, "embeddings": vectors,
                "total_duration": ns(waited + work), "load_duration": ns(waited),
                "prompt_eval_count": tokens}

    def _checked_inputs(self, request: EmbedRequest) -> list[str]:
        """The inputs to embed; an over-long one is cut unless ``truncate`` is false."""
        if isinstance(request.input, str):
            inputs = [request.input] if request.input else []  # Ollama drops an empty string
        else:
            inputs = request.inputs
        if request.truncate is False and any(
                timing.estimate_tokens(text) > self.config.num_ctx for text in inputs):
            raise BadRequest("input length exceeds maximum context length")
        return inputs


# -- what the simulated model says -----------------------------------------------------------


def chat_body(text: str) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text}}


def generate_body(text: str) -> dict[str, Any]:
    return {"response": text}


def final_chunk(model: str, body: Body, reason: str, stats: dict[str, int] | None = None
                ) -> Chunk:
    return {"model": model, "created_at": created_at(), **body(""), "done": True,
            "done_reason": reason, **(stats or {})}


def render_chat(request: ChatRequest) -> str:
    """The prompt a chat template would build: what prefill and the prefix cache see."""
    parts = []
    if request.tools:
        parts.append(f"<|tools|>\n{msgspec.json.encode(request.tools).decode()}\n")
    for message in request.messages or ():
        parts.append(f"<|{message.role}|>\n{message.content or ''}\n")
        if message.tool_calls:
            parts.append(msgspec.json.encode(message.tool_calls).decode() + "\n")
    parts.append("<|assistant|>\n")
    return "".join(parts)


def render_generate(request: GenerateRequest) -> str:
    """The prompt of a generate request; empty means Ollama's load request."""
    if not request.prompt:
        return ""
    if request.raw:
        return request.prompt
    system = f"<|system|>\n{request.system}\n" if request.system else ""
    return f"{system}<|user|>\n{request.prompt}\n<|assistant|>\n{request.suffix or ''}"


def token_text(rng: random.Random, index: int) -> str:
    """One token of deterministic pseudo-text: a made-up word, one in 16 ends a sentence."""
    draw = rng.getrandbits(_WORD_BITS + 4)
    word = _WORDS[draw & ((1 << _WORD_BITS) - 1)]
    stop = "." if draw >> _WORD_BITS == 0 else ""
    return f"{' ' if index else ''}{word}{stop}"


def embedding(model_key: str, text: str, dim: int, dimensions: int | None) -> list[float]:
    """A unit vector determined by the model and the text; `dimensions` keeps the first ones."""
    vector = np.random.default_rng(timing.stable_seed(model_key, text)).standard_normal(dim)
    if dimensions is not None and 0 < dimensions < dim:
        vector = vector[:dimensions]
    vector /= np.linalg.norm(vector)
    return vector.tolist()


# -- synthetic models ------------------------------------------------------------------------


def synthetic_models(entries: tuple[str, ...], modified_at: datetime) -> dict[str, LocalModel]:
    """``sim_models`` entries (``"name:tag=size_bytes"``) as models keyed by canonical name."""
    models = {}
    for entry in entries:
        name, size = parse_sim_model(entry)
        models[name.key] = synthetic_model(name, size, modified_at)
    return models


def parse_sim_model(entry: str) -> tuple[names.ModelName, int]:
    raw_name, sep, raw_size = entry.rpartition("=")
    try:
        name = names.parse(raw_name.strip())
        size = int(raw_size.strip())
        if not sep or size <= 0:
            raise ValueError(entry)
    except (BadRequest, ValueError):
        raise ConfigError(f"node.sim_models entry {entry!r} must look like NAME:TAG=SIZE_BYTES "
                          "with a valid model name and a positive size") from None
    return name, size


def synthetic_model(name: names.ModelName, size: int, modified_at: datetime) -> LocalModel:
    """A model that exists only in the simulation, shaped like one in the store."""
    params = int(size * 8 / BITS_PER_WEIGHT)
    config = {
        "model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
        "model_type": GGUFInfo(version=3, parameter_count=params).parameter_size,
        "file_type": "Q4_K_M", "architecture": "amd64", "os": "linux",
    }
    config_raw = msgspec.json.encode(config)
    layer_digest = hashlib.sha256(f"ollamamax-sim {name.key} {size}".encode()).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "size": len(config_raw),
                   "digest": f"sha256:{hashlib.sha256(config_raw).hexdigest()}"},
        # Ollama's size counts every layer, so the model layer takes what the config does not.
        "layers": [{"mediaType": MODEL_MEDIA_TYPE, "size": max(size - len(config_raw), 0),
                    "digest": f"sha256:{layer_digest}"}],
    }
    digest = hashlib.sha256(msgspec.json.encode(manifest)).hexdigest()
    return LocalModel(name, manifest, digest, modified_at, config)


def simulated_show(model: LocalModel, profile: timing.Profile) -> dict[str, Any]:
    """``/api/show`` for a model without a readable GGUF file: plausible Llama-like facts."""
    return {
        "license": "",
        "modelfile": ("# Modelfile generated by OllamaMax (simulated model)\n"
                      f"FROM {model.name.short}\n"),
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": model.details(),
        "model_info": {
            "general.architecture": "llama",
            "general.file_type": 15,  # Q4_K_M
            "general.parameter_count": int(model.size * 8 / BITS_PER_WEIGHT),
            "general.quantization_version": 2,
            "llama.context_length": SYNTHETIC_CONTEXT,
            "llama.embedding_length": profile.embedding_dim,
        },
        "capabilities": ["completion", "embedding"],
        "modified_at": model.modified_at.isoformat(),
    }
