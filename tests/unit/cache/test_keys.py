"""Which requests the cache takes, and keys that change exactly when the answer can."""

from __future__ import annotations

import msgspec
import pytest

from ollamamax.api import ollama_types as ot
from ollamamax.cache.keys import Mode, cache_key, mode

DETERMINISTIC = ot.Options(temperature=0, seed=7)
MODES = {"embeddings": True, "generations": False}


@pytest.mark.parametrize("endpoint", ["embed", "embeddings"])
def test_embeddings_are_cached_unless_turned_off(endpoint):
    assert mode(endpoint, None, {}, **MODES) is Mode.LOOKUP
    assert mode(endpoint, None, {}, embeddings=False, generations=False) is Mode.SKIP


@pytest.mark.parametrize(("options", "headers", "generations", "expected"), [
    (DETERMINISTIC, {"X-OllamaMax-Cache": "use"}, False, Mode.LOOKUP),
    (DETERMINISTIC, {}, False, Mode.SKIP),  # no opt-in
    (DETERMINISTIC, {}, True, Mode.LOOKUP),  # opted in by configuration
    (ot.Options(temperature=0), {"X-OllamaMax-Cache": "use"}, False, Mode.SKIP),  # no seed
    (ot.Options(seed=1), {"X-OllamaMax-Cache": "use"}, False, Mode.SKIP),  # no temperature
    (ot.Options(temperature=0.7, seed=1), {}, True, Mode.SKIP),
    (None, {"X-OllamaMax-Cache": "use"}, True, Mode.SKIP),
])
def test_generations_need_temperature_0_a_seed_and_an_opt_in(options, headers, generations,
                                                             expected):
    for endpoint in ("chat", "generate"):
        assert mode(endpoint, options, headers, embeddings=True,
                    generations=generations) is expected


def test_cache_control_no_cache_refreshes():
    assert mode("embed", None, {"Cache-Control": "no-cache"}, **MODES) is Mode.REFRESH
    assert mode("chat", DETERMINISTIC, {"X-OllamaMax-Cache": "use",
                                        "Cache-Control": "No-Cache, max-age=0"},
                **MODES) is Mode.REFRESH


def key(body: dict, *, api="ollama", path="/api/embed", stream=False, digest="sha256:aa"):
    return cache_key(api, path, stream, digest, msgspec.json.encode(body))


def test_the_key_ignores_field_order_stream_and_keep_alive():
    base = {"model": "m", "input": ["a", "b"], "options": {"seed": 1, "temperature": 0}}
    same = {"options": {"temperature": 0, "seed": 1}, "keep_alive": "1h", "input": ["a", "b"],
            "model": "m", "stream": False}
    assert key(base) == key(same)


@pytest.mark.parametrize("change", [
    {"input": ["a", "c"]}, {"input": ["b", "a"]}, {"options": {"seed": 2, "temperature": 0}},
    {"model": "other"}, {"truncate": False}, {"dimensions": 8},
])
def test_the_key_changes_with_anything_that_changes_the_answer(change):
    base = {"model": "m", "input": ["a", "b"], "options": {"seed": 1, "temperature": 0}}
    assert key(base) != key({**base, **change})


def test_the_key_changes_with_digest_api_path_and_streaming():
    body = {"model": "m", "input": "a"}
    keys = {key(body), key(body, digest="sha256:bb"), key(body, api="openai"),
            key(body, path="/api/embeddings"), key(body, stream=True)}
    assert len(keys) == 5
