"""The official `ollama` and `openai` clients against the gateway, over real node processes."""

from __future__ import annotations

import base64
import struct

import ollama
import openai
import pytest

MESSAGES = [{"role": "user", "content": "Tell me about llamas."}]
OPTIONS = {"num_predict": 12, "temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def oc(cluster):
    with ollama.Client(host=cluster.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def ai(cluster):
    with openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", timeout=60,
                       max_retries=0) as client:
        yield client


def test_list_and_show(cluster, oc):
    names = [m.model for m in oc.list().models]
    assert cluster.model in names
    assert names.count(cluster.model) == 1  # the union over nodes lists it once
    shown = oc.show(cluster.model)
    assert shown.details is not None and shown.details.family
    assert shown.modelinfo


def test_chat_not_streamed(cluster, oc):
    r = oc.chat(model=cluster.model, messages=MESSAGES, options=OPTIONS)
    assert r.done and r.done_reason in ("stop", "length")
    assert r.message.role == "assistant" and isinstance(r.message.content, str)
    assert 0 < r.eval_count <= 12
    assert r.prompt_eval_count > 0 and r.total_duration > 0


def test_chat_streamed_matches_not_streamed(cluster, oc):
    whole = oc.chat(model=cluster.model, messages=MESSAGES, options=OPTIONS)
    chunks = list(oc.chat(model=cluster.model, messages=MESSAGES, options=OPTIONS, stream=True))
    assert len(chunks) > 1
    assert all(not c.done for c in chunks[:-1]) and chunks[-1].done
    assert "".join(c.message.content for c in chunks) == whole.message.content
    assert chunks[-1].eval_count == whole.eval_count


def test_generate_both_ways(cluster, oc):
    whole = oc.generate(model=cluster.model, prompt="Once upon a time", options=OPTIONS)
    assert whole.done and whole.eval_count > 0 and isinstance(whole.response, str)
    parts = list(oc.generate(model=cluster.model, prompt="Once upon a time", options=OPTIONS,
                             stream=True))
    assert parts[-1].done
    assert "".join(p.response for p in parts) == whole.response


def test_embed_and_legacy_embeddings(cluster, oc):
    r = oc.embed(model=cluster.model, input=["first text", "second text"])
    assert len(r.embeddings) == 2
    dim = len(r.embeddings[0])
    assert dim > 0 and len(r.embeddings[1]) == dim
    norm = sum(x * x for x in r.embeddings[0]) ** 0.5
    assert norm == pytest.approx(1.0, abs=1e-3)
    legacy = oc.embeddings(model=cluster.model, prompt="first text")
    assert len(legacy.embedding) == dim


def test_ps_says_what_is_loaded_where(cluster, oc):
    oc.generate(model=cluster.model, prompt="hi", options=OPTIONS)
    loaded = oc.ps().models
    assert any(m.model == cluster.model for m in loaded)
    raw = cluster.get("/api/ps")["models"]
    assert {m["node"] for m in raw} <= {"node-1", "node-2"}


def test_load_and_unload_requests(cluster, oc):
    loaded = oc.generate(model=cluster.model, prompt="", keep_alive="1m")
    assert loaded.done and loaded.done_reason == "load"
    unloaded = oc.chat(model=cluster.model, messages=[], keep_alive=0)
    assert unloaded.done_reason == "unload"


def test_version_and_root(cluster):
    assert cluster.get("/api/version")["version"]
    import urllib.request

    with urllib.request.urlopen(cluster.url + "/", timeout=5) as r:
        assert r.read() == b"Ollama is running"


def test_openai_chat(cluster, ai):
    r = ai.chat.completions.create(model=cluster.model, messages=MESSAGES, max_tokens=12,
                                   temperature=0, seed=7)
    assert r.object == "chat.completion" and r.model == cluster.model
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_openai_chat_stream_with_usage(cluster, ai):
    whole = ai.chat.completions.create(model=cluster.model, messages=MESSAGES, max_tokens=12,
                                       temperature=0, seed=7)
    chunks = list(ai.chat.completions.create(
        model=cluster.model, messages=MESSAGES, max_tokens=12, temperature=0, seed=7,
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_openai_completions(cluster, ai):
    r = ai.completions.create(model=cluster.model, prompt="Once upon a time", max_tokens=8,
                              temperature=0, seed=1)
    assert r.object == "text_completion" and isinstance(r.choices[0].text, str)
    streamed = list(ai.completions.create(model=cluster.model, prompt="Once upon a time",
                                          max_tokens=8, temperature=0, seed=1, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text


def test_openai_embeddings_float_and_base64(cluster, ai, oc):
    floats = ai.embeddings.create(model=cluster.model, input=["a b c", "d e f"],
                                  encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1]
    dflt = ai.embeddings.create(model=cluster.model, input="a b c")  # the client asks base64
    assert dflt.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    import httpx

    raw = httpx.post(cluster.url + "/v1/embeddings", json={
        "model": cluster.model, "input": "a b c", "encoding_format": "base64"}, timeout=30).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    values = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert list(values) == pytest.approx(floats.data[0].embedding, abs=1e-6)


def test_openai_models(cluster, ai):
    ids = [m.id for m in ai.models.list().data]
    assert cluster.model in ids
    assert ai.models.retrieve(cluster.model).id == cluster.model
    with pytest.raises(openai.NotFoundError):
        ai.models.retrieve("no-such-model:1b")
