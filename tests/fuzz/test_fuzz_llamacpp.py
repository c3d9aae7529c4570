"""A node over the real `llamacpp` engine (the tiny GGUF): bad options are refused by the
API's validation before llama.cpp sees them, and the extreme values Ollama accepts are served,
never a 500 from the engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow
MODEL = "m:1b"


@pytest.fixture(scope="module")
def llama(llama_rig) -> Iterator[tuple[Any, httpx.Client]]:
    with httpx.Client(base_url=llama_rig.node_url, timeout=60) as client:
        yield llama_rig, client


def generate(client: httpx.Client, options: dict[str, Any], stream: bool = False,
             path: str = "/api/generate") -> httpx.Response:
    payload: dict[str, Any] = {"model": MODEL, "stream": stream, "options": options}
    if path == "/api/generate":
        payload["prompt"] = "hello world"
    else:
        payload["messages"] = [{"role": "user", "content": "hello"}]
    return client.post(path, content=json.dumps(payload, allow_nan=True).encode())


BAD = {"num_ctx": [-5, 0, 2**31], "num_batch": [0], "num_predict": [-3, 2**63],
       "top_k": [-1], "top_p": [-0.1, 1.5], "min_p": [2.0], "typical_p": [-1.0],
       "temperature": [-1.0, float("nan")], "repeat_penalty": [0, -1.0],
       "repeat_last_n": [-2], "mirostat": [3, -1], "seed": [2**64, 1.5], "num_keep": [-2],
       "mirostat_tau": [-1.0], "stop": [5, [None]]}


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(option=st.sampled_from([(k, v) for k, values in BAD.items() for v in values]),
       stream=st.booleans(), path=st.sampled_from(["/api/generate", "/api/chat"]))
@example(option=("repeat_penalty", 0), stream=False, path="/api/generate")  # llama.cpp's 400
def test_bad_options_never_reach_llama_cpp(llama, option, stream, path):
    rig, client = llama
    name, value = option
    r = generate(client, {name: value}, stream, path)
    sentence = rig.refused(r)
    # our validation's sentences, not llama.cpp's ("Failed to initialize samplers: ...")
    assert sentence.startswith(("invalid request:", "invalid JSON:")), sentence


# What Ollama accepts and gives a meaning; each must be served (repeat_last_n -1 was a 400
# from llama.cpp, huge numbers were a 500 or a hang elsewhere).
EXTREMES = [{"seed": 2**63 - 1}, {"seed": -(2**63)}, {"seed": -1}, {"top_k": 0},
            {"num_predict": -1}, {"num_predict": -2}, {"num_predict": 0},
            {"num_predict": 2**63 - 1}, {"temperature": 0}, {"temperature": 1e300},
            {"top_p": 0}, {"min_p": 1}, {"repeat_last_n": -1}, {"repeat_last_n": 2**31 - 1},
            {"num_keep": -1}, {"mirostat": 2}, {"repeat_penalty": 1e300},
            {"presence_penalty": -1e300}, {"num_ctx": 1}, {"num_ctx": 2**31 - 1},
            {"num_thread": 0}, {"stop": [""]}, {"stop": ["x"] * 200}]


@pytest.mark.parametrize("options", EXTREMES, ids=json.dumps)
def test_extreme_but_valid_options_are_served(llama, options):
    _, client = llama
    for stream in (False, True):
        r = generate(client, options, stream)
        assert r.status_code == 200, r.text[:300]


@pytest.mark.parametrize(("path", "payload", "words"), [
    ("/api/chat", {"messages": [{"role": "assistant", "content": "x",
                                 "tool_calls": [{"function": {"name": 5}}]}]}, "tool_calls"),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}], "tools": [{"x": 1}]}, "tools"),
    ("/api/chat", {"messages": [{"role": "wizard", "content": "x"}]}, "invalid role"),
    ("/api/generate", {"prompt": "x", "images": ["aGVsbG8="]}, "invalid image"),
])
def test_bad_tools_roles_and_images_are_refused_before_llama_cpp(llama, path, payload, words):
    rig, client = llama
    r = client.post(path, json={"model": MODEL, "stream": False, **payload})
    assert r.status_code == 400 and words in rig.refused(r)


def test_the_node_is_unharmed_afterwards(llama):
    rig, client = llama
    rig.assert_unharmed(client)
