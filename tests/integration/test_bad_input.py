"""Bad input gets a clear 4xx in Ollama's shape (OpenAI's on /v1), and nothing breaks."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest

from ollamamax.testing.cluster import LocalCluster

MAX_BODY = 4096


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("bad-input"), engine="sim", nodes=1,
                     node_args=["--sim-profile", "instant", "--sim-model", "m:1b=1000"],
                     env={"OLLAMAMAX_GATEWAY_MAX_BODY_BYTES": str(MAX_BODY)}).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def http(sim):
    with httpx.Client(base_url=sim.url, timeout=10) as client:
        yield client


BAD_OLLAMA = [
    ("/api/chat", b"{not json", 400, "invalid JSON"),
    ("/api/chat", b"", 400, "missing request body"),
    ("/api/chat", b'{"messages": []}', 400, "model is required"),
    ("/api/chat", b'{"model": 12}', 400, "model"),
    ("/api/chat", b'{"model": "m:1b", "messages": "hi"}', 400, "messages"),
    ("/api/chat", b'{"model": "m:1b", "messages": [{"role": "user", "content": "x",'
                  b' "images": ["not base64!"]}]}', 400, "base64"),
    ("/api/generate", b'{"model": "m:1b", "options": {"num_predict": "ten"}}', 400,
     "num_predict"),
    ("/api/generate", b'{"model": "m:1b", "keep_alive": "forever-ish"}', 400, "keep_alive"),
    ("/api/generate", b'{"model": "../../etc/passwd"}', 400, "invalid model name"),
    ("/api/embed", b'{"model": "m:1b", "input": 42}', 400, "input"),
    ("/api/embeddings", b'{"model": "m:1b", "prompt": ["a"]}', 400, "prompt"),
    ("/api/show", b'{"verbose": true}', 400, "model is required"),
    ("/api/chat", b'{"model": "nope:7b", "messages": [{"role": "user", "content": "x"}]}', 404,
     "model 'nope:7b' not found"),
    ("/api/generate", b'{"model": "nope", "prompt": "x"}', 404, "model 'nope' not found"),
    ("/api/embed", b'{"model": "nope", "input": "x"}', 404, "not found"),
    # found by tests/fuzz (each was a 200 that should not be, a 500, or a hang)
    ("/api/generate", b'{"model": "m:1b", "prompt": "\xff\xfe"}', 400, "UTF-8"),
    ("/api/generate", b'{"model": "m:1b", "keep_alive": 1e20}', 400, "keep_alive"),
    ("/api/generate", b'{"model": "m:1b", "options": {"num_predict": 1180591620717411303424}}',
     400, "num_predict"),
    ("/api/generate", b'{"model": "m:1b", "stream": true, "options": {"num_ctx": -5}}', 400,
     "num_ctx"),
    ("/api/chat", b'{"model": "m:1b", "messages": [{"role": "wizard", "content": "x"}]}', 400,
     "invalid role"),
    ("/api/chat", b'{"model": "m:1b", "messages": [{"role": "user", "content": "x",'
                  b' "images": ["aGVsbG8="]}]}', 400, "invalid image"),
    ("/api/chat", b'{"model": "m:1b", "messages": [{"role": "user", "content": "x"}],'
                  b' "tools": [{"x": 1}]}', 400, "tools"),
]


@pytest.mark.parametrize(("path", "body", "status", "words"), BAD_OLLAMA)
def test_ollama_endpoints_refuse_bad_input(http, path, body, status, words):
    r = http.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert isinstance(error, str) and words in error


def test_body_over_the_cap_is_413(http):
    r = http.post("/api/chat", content=b'{"model": "m:1b", "x": "' + b"a" * MAX_BODY + b'"}')
    assert r.status_code == 413
    assert "limit" in r.json()["error"]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/api/nope", 404), ("GET", "/api/chat", 405), ("POST", "/api/push", 404),
    ("POST", "/api/pull", 400),
    ("DELETE", "/api/delete", 404)])
def test_unknown_paths_and_methods_answer_json(http, method, path, status):
    r = http.request(method, path)
    assert r.status_code == status
    assert r.json()["error"]


BAD_OPENAI = [
    ("/v1/chat/completions", b"{oops", "JSON"),
    ("/v1/chat/completions", b'{"model": "m:1b", "messages": [{"role": "user", "content": "x"}],'
                             b' "max_tokens": -5}', "max_tokens"),
    ("/v1/chat/completions", b'{"model": "m:1b", "messages": [{"content": "x"}]}', "role"),
    ("/v1/embeddings", b'{"model": "m:1b", "input": "x", "user": "\xff"}', "UTF-8"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
    ("/v1/chat/completions", b'{"model": "m:1b", "messages": []}', "messages"),
    ("/v1/chat/completions", b'{"model": "m:1b", "messages": [{"role": "user", "content": "x"}],'
                             b' "temperature": "hot"}', "temperature"),
    ("/v1/completions", b'{"model": "m:1b", "prompt": 12}', "prompt"),
    ("/v1/embeddings", b'{"model": "m:1b", "input": {"a": 1}}', "input"),
]


@pytest.mark.parametrize(("path", "body", "words"), BAD_OPENAI)
def test_openai_endpoints_refuse_bad_input_in_openai_shape(http, path, body, words):
    r = http.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert words.lower() in error["message"].lower()
    assert error["type"] == "invalid_request_error"


def test_clients_raise_their_own_errors(sim):
    with ollama.Client(host=sim.url) as oc, pytest.raises(ollama.ResponseError) as info:
        oc.chat(model="missing:1b", messages=[])
    assert info.value.status_code == 404 and "not found" in info.value.error
    with openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="missing:1b",
                                           messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="m:1b", messages=[])


def test_service_is_unharmed_and_nothing_unexpected_was_logged(sim, http):
    ok = http.post("/api/generate", json={"model": "m:1b", "prompt": "hi", "stream": False})
    assert ok.status_code == 200 and ok.json()["done"] is True
    for name in ("gateway", "node-1"):
        log = sim.log(name)
        assert "unexpected error" not in log, log[-2000:]
        assert "Traceback" not in log, log[-2000:]
