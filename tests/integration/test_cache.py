"""The response cache through a real gateway over a real llamacpp node (tiny GGUF model):
hits are byte-identical to the answers they were recorded from, streams replay as streams,
and a model re-imported under the same name (a new digest) is a miss with a fresh answer.

Raw HTTP reads bytes and headers; the official `ollama` and `openai` clients check that
replayed answers read exactly like the recorded ones.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

import ollama
import openai
import pytest

from ollamamax.testing.cluster import LocalCluster
from ollamamax.testing.tiny_gguf import import_tiny_model

pytestmark = pytest.mark.slow

MODEL = "tiny:latest"
USE = {"X-OllamaMax-Cache": "use"}
OPTIONS = {"num_predict": 8, "temperature": 0, "seed": 7}
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cache-cluster")
    env = {"OLLAMAMAX_CACHE_TIERS": "memory,disk",
           "OLLAMAMAX_CACHE_DISK_DIR": str(run_dir / "cache")}
    with LocalCluster(run_dir, engine="llamacpp", nodes=1, env=env,
                      prepare=lambda store: import_tiny_model(store.root, name=MODEL)) as c:
        yield c


def post(url: str, path: str, body: dict, headers: dict | None = None) -> tuple[bytes, dict]:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    with _DIRECT.open(request, timeout=60) as reply:
        return reply.read(), dict(reply.headers)


def cache_state(headers: dict) -> str | None:
    return headers.get("X-OllamaMax-Cache")


def metric(cluster, name: str) -> float:
    with _DIRECT.open(cluster.url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found = re.findall(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(found[0]) if found else 0.0


def test_an_embedding_is_recorded_then_replayed_byte_for_byte(cluster):
    body = {"model": MODEL, "input": ["the first chunk", "a second chunk"]}
    first, h1 = post(cluster.url, "/api/embed", body)
    second, h2 = post(cluster.url, "/api/embed", {**body, "keep_alive": "10m"})
    assert cache_state(h1) == "miss"
    assert cache_state(h2) == "hit; tier=memory"
    assert second == first
    with ollama.Client(host=cluster.url, timeout=60) as client:
        again = client.embed(model=MODEL, input=["the first chunk", "a second chunk"])
    assert again.embeddings == json.loads(first)["embeddings"]
    legacy, h3 = post(cluster.url, "/api/embeddings", {"model": MODEL, "prompt": "x"})
    legacy2, h4 = post(cluster.url, "/api/embeddings", {"model": MODEL, "prompt": "x"})
    assert (cache_state(h3), cache_state(h4), legacy2) == ("miss", "hit; tier=memory", legacy)


def test_a_deterministic_chat_is_cached_only_when_opted_in(cluster):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}],
            "options": OPTIONS, "stream": False}
    _, h0 = post(cluster.url, "/api/chat", body)
    assert cache_state(h0) is None  # no opt-in: the cache does not look
    first, h1 = post(cluster.url, "/api/chat", body, USE)
    second, h2 = post(cluster.url, "/api/chat", body, USE)
    assert (cache_state(h1), cache_state(h2)) == ("miss", "hit; tier=memory")
    assert second == first
    _, h3 = post(cluster.url, "/api/chat", {**body, "options": {"temperature": 0.8, "num_predict": 4}}, USE)
    assert cache_state(h3) is None  # not deterministic: never cached
    with ollama.Client(host=cluster.url, timeout=60, headers=USE) as client:
        replayed = client.chat(model=MODEL, messages=body["messages"], options=OPTIONS)
    assert replayed.message.content == json.loads(first)["message"]["content"]


def test_a_stream_is_replayed_as_the_stream_that_was_recorded(cluster):
    body = {"model": MODEL, "prompt": "once upon a time", "options": OPTIONS}
    first, h1 = post(cluster.url, "/api/generate", body, USE)
    second, h2 = post(cluster.url, "/api/generate", body, USE)
    assert (cache_state(h1), cache_state(h2)) == ("miss", "hit; tier=memory")
    assert h2["Content-Type"].startswith("application/x-ndjson")
    assert second == first and len(first.splitlines()) > 2
    with ollama.Client(host=cluster.url, timeout=60, headers=USE) as client:
        parts = list(client.generate(model=MODEL, prompt=body["prompt"], options=OPTIONS,
                                     stream=True))
    assert "".join(p.response for p in parts) == "".join(
        json.loads(line)["response"] for line in first.splitlines())
    assert parts[-1].done


def test_no_cache_asks_the_node_and_records_the_fresh_answer(cluster):
    body = {"model": MODEL, "input": "refresh me"}
    post(cluster.url, "/api/embed", body)
    fresh, h1 = post(cluster.url, "/api/embed", body, {"Cache-Control": "no-cache"})
    again, h2 = post(cluster.url, "/api/embed", body)
    assert (cache_state(h1), cache_state(h2)) == ("refresh", "hit; tier=memory")
    assert again == fresh


def test_openai_answers_are_cached_apart_from_ollama_ones(cluster):
    with openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", timeout=60,
                       max_retries=0) as client:
        raw1 = client.embeddings.with_raw_response.create(model=MODEL, input="openai chunk")
        raw2 = client.embeddings.with_raw_response.create(model=MODEL, input="openai chunk")
    assert raw1.headers["X-OllamaMax-Cache"] == "miss"
    assert raw2.headers["X-OllamaMax-Cache"] == "hit; tier=memory"
    assert raw2.content == raw1.content
    assert raw2.parse().data[0].embedding == raw1.parse().data[0].embedding


def test_a_new_digest_drops_the_old_answers_and_gets_a_fresh_one(cluster):
    body = {"model": MODEL, "input": "a chunk that outlives its model"}
    old, _ = post(cluster.url, "/api/embed", body)
    _, h = post(cluster.url, "/api/embed", body)
    assert cache_state(h) == "hit; tier=memory"
    node = cluster.nodes()[0]
    # re-import different weights under the same name, then unload the old ones
    import_tiny_model(cluster.run_dir / "node-1" / "models", name=MODEL, seed=1)
    post(node["url"], "/api/generate", {"model": MODEL, "keep_alive": 0})
    deadline = time.monotonic() + 15
    while metric(cluster, "ollamamax_cache_invalidations_total") < 1:
        assert time.monotonic() < deadline, "the gateway never saw the new digest"
        time.sleep(0.1)
    fresh, h1 = post(cluster.url, "/api/embed", body)
    assert cache_state(h1) == "miss"
    assert json.loads(fresh)["embeddings"] != json.loads(old)["embeddings"]
    again, h2 = post(cluster.url, "/api/embed", body)
    assert (cache_state(h2), again) == ("hit; tier=memory", fresh)


def test_hits_misses_and_bytes_are_exported(cluster):
    post(cluster.url, "/api/embed", {"model": MODEL, "input": "count me"})
    post(cluster.url, "/api/embed", {"model": MODEL, "input": "count me"})
    assert metric(cluster, 'ollamamax_cache_lookups_total{result="hit",tier="memory"}') >= 1
    assert metric(cluster, 'ollamamax_cache_lookups_total{result="miss",tier="disk"}') >= 1
    assert metric(cluster, 'ollamamax_cache_bytes{tier="memory"}') > 0
