from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from ollamamax.api.ollama_types import (
    ChatRequest,
    EmbedRequest,
    GenerateRequest,
    Message,
    Options,
    ShowRequest,
)
from ollamamax.config import NodeConfig
from ollamamax.errors import BadRequest, ConfigError, EngineOverloaded, ModelNotFound
from ollamamax.models.store import MODEL_MEDIA_TYPE, ModelStore
from ollamamax.node import engines
from ollamamax.node.engines.sim import SimEngine, parse_sim_model
from ollamamax.sim import timing

MODEL = "sim-tiny:1b"
SIZE = 1_000_000_000
OTHER = "sim-other:7b"

FINAL_FIELDS = {"total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                "eval_count", "eval_duration"}


class FakeTime:
    """Virtual time: `sleep` records what it was asked and moves the clock; `gate` can hold
    sleepers to keep a request busy."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self.gate = asyncio.Event()
        self.gate.set()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await self.gate.wait()
        self.now += seconds
        await asyncio.sleep(0)

    def take(self) -> list[float]:
        slept, self.slept = self.slept, []
        return slept


MakeEngine = Callable[..., Awaitable[SimEngine]]


@pytest.fixture
async def make_engine(tmp_path: Any) -> AsyncIterator[MakeEngine]:
    made: list[SimEngine] = []

    async def make(fake: FakeTime | None = None, **settings: Any) -> SimEngine:
        fields: dict[str, Any] = {
            "engine": "sim", "models_dir": str(tmp_path / "models"), "sim_profile": "cpu-small",
            "sim_models": (f"{MODEL}={SIZE}", f"{OTHER}=4000000000"), **settings,
        }
        fake = fake or FakeTime()
        engine = SimEngine(NodeConfig(**fields), clock=fake.clock, sleep=fake.sleep)
        await engine.start()
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.close()


async def collect(chunks: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk async for chunk in chunks]


def chat(content: str = "Why is the sky blue?", **fields: Any) -> ChatRequest:
    return ChatRequest(model=fields.pop("model", MODEL),
                       messages=[Message(role="user", content=content)], **fields)


def engine_prompt(content: str) -> str:
    """What the engine renders for a one-message chat."""
    return f"<|user|>\n{content}\n<|assistant|>\n"


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


# -- shapes ----------------------------------------------------------------------------------


async def test_chat_chunks_have_ollamas_shape(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    chunks = await collect(engine.chat(chat(options=Options(num_predict=5))))
    *tokens, last = chunks
    assert len(tokens) == 5
    for chunk in tokens:
        assert set(chunk) == {"model", "created_at", "message", "done"}
        assert chunk["model"] == MODEL and chunk["done"] is False
        assert chunk["message"]["role"] == "assistant" and chunk["message"]["content"]
        assert chunk["created_at"].endswith("Z")
    assert last["done"] is True and last["done_reason"] == "length"
    assert last["message"] == {"role": "assistant", "content": ""}
    assert set(last) >= FINAL_FIELDS
    assert all(isinstance(last[k], int) and last[k] >= 0 for k in FINAL_FIELDS)
    assert last["eval_count"] == 5
    prompt = engine_prompt("Why is the sky blue?")
    assert last["prompt_eval_count"] == timing.estimate_tokens(prompt)
    assert last["total_duration"] >= last["prompt_eval_duration"] + last["eval_duration"]


async def test_generate_chunks_use_response(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    request = GenerateRequest(model=MODEL, prompt="Once upon a time",
                              options=Options(num_predict=3))
    *tokens, last = await collect(engine.generate(request))
    assert [set(c) for c in tokens] == [{"model", "created_at", "response", "done"}] * 3
    assert all(c["response"] for c in tokens)
    assert last["response"] == "" and last["done"] is True and last["eval_count"] == 3
    assert set(last) >= FINAL_FIELDS


async def test_without_num_predict_the_answer_stops_by_itself(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    *tokens, last = await collect(engine.chat(chat()))
    default = engine.profile.default_output_tokens
    assert last["done_reason"] == "stop"
    assert last["eval_count"] == len(tokens)
    assert default // 2 <= len(tokens) <= default + default // 2


async def test_num_predict_zero_gives_only_the_final_chunk(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    chunks = await collect(engine.chat(chat(options=Options(num_predict=0))))
    assert len(chunks) == 1 and chunks[0]["eval_count"] == 0
    assert chunks[0]["done_reason"] == "length"


async def test_same_request_same_text_and_seed_changes_it(make_engine: MakeEngine) -> None:
    one = await make_engine()
    two = await make_engine()

    async def text(engine: SimEngine, **options: Any) -> str:
        chunks = await collect(engine.chat(chat(options=Options(**options))))
        return "".join(c["message"]["content"] for c in chunks)

    assert await text(one) == await text(two)
    assert await text(one, seed=1) == await text(two, seed=1)
    assert await text(one, seed=1) != await text(one, seed=2)
    # a limit cuts the same text short
    assert (await text(one)).startswith(await text(one, num_predict=4))
    seeded = await make_engine(seed=99)
    assert await text(seeded) != await text(one)


async def test_unknown_model_fails_before_the_first_chunk(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    with pytest.raises(ModelNotFound):
        await anext(engine.chat(chat(model="nope:1b")))
    with pytest.raises(ModelNotFound):
        await anext(engine.generate(GenerateRequest(model="nope", prompt="hi")))
    with pytest.raises(ModelNotFound):
        await engine.embed(EmbedRequest(model="nope", input="hi"))
    with pytest.raises(ModelNotFound):
        await engine.show(ShowRequest(model="nope"))
    assert engine.residency.runners == {}


# -- timing ----------------------------------------------------------------------------------


async def test_first_request_loads_then_prefills_then_decodes(make_engine: MakeEngine) -> None:
    fake = FakeTime()
    engine = await make_engine(fake)
    profile = engine.profile
    *_, last = await collect(engine.chat(chat(options=Options(num_predict=4))))
    load, prefill, *gaps = fake.take()
    assert load == pytest.approx(timing.load_time(profile, SIZE))
    tokens = last["prompt_eval_count"]
    assert prefill == pytest.approx(timing.ttft(profile, tokens))
    assert gaps == pytest.approx([timing.time_between_tokens(profile, 1)] * 3)
    assert last["load_duration"] == pytest.approx(load * 1e9, abs=1e3)
    assert last["prompt_eval_duration"] == pytest.approx(prefill * 1e9, abs=1)
    assert last["eval_duration"] == pytest.approx(sum(gaps) * 1e9, abs=1)


async def test_prefix_cache_lowers_prefill_of_a_repeated_prompt(make_engine: MakeEngine) -> None:
    fake = FakeTime()
    engine = await make_engine(fake)
    question = "Explain the history of the Roman empire in detail, please. " * 20
    request = chat(question, options=Options(num_predict=1))
    await collect(engine.chat(request))
    _load, cold = fake.take()
    *_, last = await collect(engine.chat(request))
    (warm,) = fake.take()
    assert warm < cold
    # every full block is cached; the partial block at the end is evaluated again
    prompt = engine_prompt(question)
    cached = timing.BLOCK_TOKENS * len(timing.prompt_blocks(prompt))
    assert last["prompt_eval_count"] == timing.estimate_tokens(prompt)
    assert last["prompt_eval_cached_count"] == cached
    assert warm == pytest.approx(timing.ttft(engine.profile, last["prompt_eval_count"] - cached))
    # a prompt that shares only the start of it pays for the rest
    await collect(engine.chat(chat(question[:400] + "something else entirely " * 20,
                                   options=Options(num_predict=1))))
    (partial,) = fake.take()
    assert warm < partial < cold


async def test_unload_drops_the_prefix_cache(make_engine: MakeEngine) -> None:
    fake = FakeTime()
    engine = await make_engine(fake)
    request = chat("a long and repeated question " * 20, options=Options(num_predict=1),
                   keep_alive=0)
    await collect(engine.chat(request))
    _load, cold = fake.take()
    await collect(engine.chat(request))
    _load, again = fake.take()
    assert again == pytest.approx(cold)


async def test_sim_speed_compresses_every_sleep(make_engine: MakeEngine) -> None:
    fake = FakeTime()
    engine = await make_engine(fake, sim_speed=10.0)
    *_, last = await collect(engine.chat(chat(options=Options(num_predict=2))))
    load, prefill, gap = fake.take()
    profile = engine.profile
    assert load == pytest.approx(timing.load_time(profile, SIZE) / 10)
    assert prefill == pytest.approx(timing.ttft(profile, last["prompt_eval_count"]) / 10)
    assert gap == pytest.approx(profile.decode_s_per_token / 10)
    # the answer reports the simulated machine's durations, not the compressed ones
    assert last["eval_duration"] == pytest.approx(profile.decode_s_per_token * 1e9, abs=1)


async def test_concurrent_sequences_slow_each_other_down(make_engine: MakeEngine) -> None:
    fake = FakeTime()
    engine = await make_engine(fake, num_parallel=2)
    await collect(engine.chat(ChatRequest(model=MODEL, messages=[])))  # load first
    fake.take()
    fake.gate.clear()
    first = asyncio.create_task(collect(engine.chat(chat("one", options=Options(num_predict=3)))))
    second = asyncio.create_task(collect(engine.chat(chat("two", options=Options(num_predict=3)))))
    await until(lambda: engine.sequences == 2)
    fake.gate.set()
    one, two = (chunks[-1] for chunks in await asyncio.gather(first, second))
    profile = engine.profile
    assert profile.max_sequences == 2  # the node's slots
    slowest = timing.time_between_tokens(profile, 2)
    assert slowest == pytest.approx(profile.decode_s_per_token * profile.slowdown_at_max)
    # the second prefilled beside the first; both decoded side by side
    assert two["prompt_eval_duration"] == pytest.approx(2 * one["prompt_eval_duration"], abs=1)
    assert one["eval_duration"] == two["eval_duration"] == pytest.approx(2 * slowest * 1e9, abs=1)


async def test_instant_profile_never_sleeps(make_engine: MakeEngine) -> None:
    fake = FakeTime()
    engine = await make_engine(fake, sim_profile="instant")
    chunks = await collect(engine.chat(chat(options=Options(num_predict=200))))
    assert len(chunks) == 201
    assert fake.take() == []
    assert chunks[-1]["total_duration"] == 0


# -- residency -------------------------------------------------------------------------------


async def test_queue_full_is_overloaded(make_engine: MakeEngine) -> None:
    fake = FakeTime()
    engine = await make_engine(fake, num_parallel=1, max_queue=1)
    await collect(engine.chat(ChatRequest(model=MODEL, messages=[])))
    fake.gate.clear()
    busy = asyncio.create_task(collect(engine.chat(chat(options=Options(num_predict=2)))))
    await until(lambda: engine.sequences == 1)
    queued = asyncio.create_task(collect(engine.chat(chat(options=Options(num_predict=2)))))
    await until(lambda: engine.residency.queue_depth == 1)
    assert engine.load_status()["queue_depth"] == 1
    with pytest.raises(EngineOverloaded):
        await anext(engine.chat(chat()))
    fake.gate.set()
    done = await asyncio.gather(busy, queued)
    assert [chunks[-1]["eval_count"] for chunks in done] == [2, 2]


async def test_closing_the_stream_early_frees_the_slot(make_engine: MakeEngine) -> None:
    engine = await make_engine(num_parallel=1)
    stream = engine.chat(chat(options=Options(num_predict=1000)))
    first = await anext(stream)
    assert first["done"] is False
    assert engine.load_status()["loaded"][0]["busy"] == 1
    await stream.aclose()
    assert engine.sequences == 0
    assert engine.load_status()["loaded"][0]["busy"] == 0
    *_, last = await collect(engine.chat(chat(options=Options(num_predict=2))))
    assert last["eval_count"] == 2


async def test_cancelled_request_frees_the_slot(make_engine: MakeEngine) -> None:
    fake = FakeTime()
    engine = await make_engine(fake, num_parallel=1)
    await collect(engine.chat(ChatRequest(model=MODEL, messages=[])))
    fake.gate.clear()
    task = asyncio.create_task(collect(engine.chat(chat())))
    await until(lambda: engine.sequences == 1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert engine.sequences == 0
    assert engine.load_status()["loaded"][0]["busy"] == 0


async def test_empty_request_loads_and_keep_alive_zero_unloads(make_engine: MakeEngine) -> None:
    fake = FakeTime()
    engine = await make_engine(fake, sim_profile="gpu-8b")
    (loaded,) = await collect(engine.chat(ChatRequest(model=MODEL, messages=[])))
    assert loaded["done"] is True and loaded["done_reason"] == "load"
    assert loaded["message"] == {"role": "assistant", "content": ""}
    assert fake.take() == [pytest.approx(timing.load_time(engine.profile, SIZE))]
    (ps,) = await engine.ps()
    assert ps["name"] == MODEL and ps["size"] == SIZE and ps["size_vram"] == SIZE
    assert ps["expires_at"].endswith("Z")
    (unloaded,) = await collect(engine.generate(GenerateRequest(model=MODEL, keep_alive=0)))
    assert unloaded["done_reason"] == "unload" and unloaded["response"] == ""
    assert await engine.ps() == []


async def test_keep_alive_zero_unloads_after_the_request(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    await collect(engine.chat(chat(options=Options(num_predict=2))))
    assert [m["name"] for m in await engine.ps()] == [MODEL]
    await collect(engine.chat(chat(options=Options(num_predict=2), keep_alive=0)))
    assert await engine.ps() == []


async def test_loading_another_model_evicts_at_max_loaded(make_engine: MakeEngine) -> None:
    engine = await make_engine(max_loaded=1)
    await collect(engine.chat(chat(options=Options(num_predict=1))))
    await collect(engine.chat(chat(model=OTHER, options=Options(num_predict=1))))
    assert [m["name"] for m in await engine.ps()] == [OTHER]


# -- models ----------------------------------------------------------------------------------


async def test_synthetic_models_are_listed_with_their_size(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    tags = {t["name"]: t for t in await engine.tags()}
    assert tags[MODEL]["size"] == SIZE
    assert tags[OTHER]["size"] == 4_000_000_000
    entry = tags[MODEL]
    assert set(entry) == {"name", "model", "modified_at", "size", "digest", "details"}
    assert len(entry["digest"]) == 64
    assert entry["details"]["format"] == "gguf" and entry["details"]["family"] == "llama"
    assert entry["details"]["parameter_size"].endswith("B")


async def test_show_of_a_synthetic_model(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    shown = await engine.show(ShowRequest(model=MODEL))
    assert {"modelfile", "parameters", "template", "details", "model_info", "capabilities",
            "modified_at"} <= set(shown)
    assert "completion" in shown["capabilities"]
    assert shown["model_info"]["general.architecture"] == "llama"
    assert shown["model_info"]["llama.embedding_length"] == engine.profile.embedding_dim


async def test_stored_models_are_served_too(make_engine: MakeEngine, tmp_path: Any) -> None:
    store = ModelStore(tmp_path / "models")
    config_digest, config_size = store.write_blob_bytes(b'{"model_family": "llama"}')
    blob, blob_size = store.write_blob_bytes(b"not really a gguf file")
    store.write_manifest("stored:latest", {
        "schemaVersion": 2,
        "config": {"digest": config_digest, "size": config_size},
        "layers": [{"mediaType": MODEL_MEDIA_TYPE, "digest": blob, "size": blob_size}],
    })
    engine = await make_engine()
    names = [t["name"] for t in await engine.tags()]
    assert names == sorted([MODEL, OTHER, "stored:latest"])
    shown = await engine.show(ShowRequest(model="stored"))
    assert shown["details"]["family"] == "llama"
    *_, last = await collect(engine.chat(chat(model="stored", options=Options(num_predict=2))))
    assert last["eval_count"] == 2


def test_sim_models_entries_are_checked() -> None:
    name, size = parse_sim_model("llama3.1:8b=4920000000")
    assert name.short == "llama3.1:8b" and size == 4_920_000_000
    for bad in ("llama3", "llama3=", "llama3=-1", "llama3=big", "bad name=10"):
        with pytest.raises(ConfigError, match="sim_models"):
            parse_sim_model(bad)


def test_unknown_profile_is_refused_at_start(tmp_path: Any) -> None:
    config = NodeConfig(engine="sim", models_dir=str(tmp_path), sim_profile="quantum")
    with pytest.raises(ConfigError, match="valid sim profiles"):
        SimEngine(config)


def test_registered_as_sim(tmp_path: Any) -> None:
    engine = engines.create(NodeConfig(engine="sim", models_dir=str(tmp_path)))
    assert isinstance(engine, SimEngine) and engine.name == "sim"


# -- embeddings ------------------------------------------------------------------------------


async def test_embeddings_are_unit_vectors_of_the_profile_dimension(
        make_engine: MakeEngine) -> None:
    fake = FakeTime()
    engine = await make_engine(fake)
    result = await engine.embed(EmbedRequest(model=MODEL, input=["hello", "world", "hello"]))
    assert set(result) == {"model", "embeddings", "total_duration", "load_duration",
                           "prompt_eval_count"}
    one, two, three = result["embeddings"]
    assert len(one) == engine.profile.embedding_dim == 576
    for vector in (one, two):
        assert math.fsum(x * x for x in vector) == pytest.approx(1.0)
    assert one == three and one != two
    assert result["prompt_eval_count"] == 6  # two tokens each
    assert fake.take()[-1] == pytest.approx(timing.embed_time(engine.profile, 6))
    again = await engine.embed(EmbedRequest(model=MODEL, input="hello"))
    assert again["embeddings"] == [one]


async def test_dimensions_truncate_and_renormalise(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    full = (await engine.embed(EmbedRequest(model=MODEL, input="hi")))["embeddings"][0]
    (short,) = (await engine.embed(EmbedRequest(model=MODEL, input="hi", dimensions=8)))[
        "embeddings"]
    assert len(short) == 8
    assert math.fsum(x * x for x in short) == pytest.approx(1.0)
    norm = math.sqrt(math.fsum(x * x for x in full[:8]))
    assert short == pytest.approx([x / norm for x in full[:8]])


async def test_empty_embed_input_only_loads(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    result = await engine.embed(EmbedRequest(model=MODEL, input=""))
    assert result == {"model": MODEL, "embeddings": []}
    assert [m["name"] for m in await engine.ps()] == [MODEL]


async def test_too_long_embed_input_without_truncate_is_refused(make_engine: MakeEngine) -> None:
    engine = await make_engine(num_ctx=16)
    with pytest.raises(BadRequest):
        await engine.embed(EmbedRequest(model=MODEL, input="x" * 100, truncate=False))
    result = await engine.embed(EmbedRequest(model=MODEL, input="x" * 100))
    assert result["prompt_eval_count"] == 16
