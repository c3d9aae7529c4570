"""Property: every bad OpenAI-compatible request is a 4xx in OpenAI's error shape
(``{"error": {"message", "type", "param", "code"}}``, as api/errors.py and Ollama's /v1 answer),
never a 5xx; a streaming request with bad options fails before its first event."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

MODEL = "m:1b"
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

BASES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": MODEL, "prompt": "hi"},
    "/v1/embeddings": {"model": MODEL, "input": "hi"},
}
PATHS = sorted(BASES)

beyond_int64 = st.integers(min_value=2**63) | st.integers(max_value=-(2**63) - 1)
wrong = (st.text(max_size=6) | st.lists(st.integers(), max_size=2)
         | st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2))
not_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])
ROLES = ("system", "user", "assistant", "tool", "developer")

SAMPLING = [
    ("max_tokens", st.integers(max_value=-1) | beyond_int64 | wrong | st.floats()),
    ("seed", beyond_int64 | wrong | st.floats()),
    ("temperature", wrong | not_finite | st.floats(max_value=-1e-9)),
    ("top_p", wrong | not_finite | st.floats(min_value=1.000001)),
    ("stop", st.integers() | st.lists(st.integers(), min_size=1, max_size=2)),
    ("stream", st.integers() | st.text(max_size=3)),
    ("frequency_penalty", wrong | not_finite),
]


def _field(path: str) -> st.SearchStrategy[tuple[str, Any]]:
    pairs = [st.tuples(st.just("model"), st.integers() | st.lists(st.text(), max_size=1)
                       | st.just(""))]
    if path == "/v1/embeddings":
        pairs += [st.tuples(st.just("input"), st.integers() | st.just([])
                            | st.lists(st.integers() | st.none(), min_size=1, max_size=3)),
                  st.tuples(st.just("dimensions"), st.integers(max_value=-1) | beyond_int64),
                  st.tuples(st.just("encoding_format"), st.text(max_size=6).filter(
                      lambda t: t.lower() not in ("", "float", "base64")))]
        return st.one_of(pairs)
    pairs += [st.tuples(st.just(name), values) for name, values in SAMPLING]
    if path == "/v1/completions":
        pairs.append(st.tuples(st.just("prompt"), st.integers() | st.lists(st.text(), max_size=2)))
    else:
        message = st.fixed_dictionaries({
            "role": st.text(max_size=10).filter(lambda r: r not in ROLES) | st.integers(),
            "content": st.just("hi")}) | st.fixed_dictionaries({"content": st.just("x")}) \
            | st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(
                st.fixed_dictionaries({"type": st.sampled_from(["image_url", "audio", "x"]),
                                       "image_url": st.text(max_size=12)}),
                min_size=1, max_size=2)}) \
            | st.fixed_dictionaries({"role": st.just("user"), "content": st.just(None)})
        pairs += [st.tuples(st.just("messages"), st.lists(message, min_size=1, max_size=2)
                            | st.just([]) | st.integers()),
                  st.tuples(st.just("top_logprobs"), st.integers(min_value=21) | st.integers(
                      max_value=-1)),
                  st.tuples(st.just("max_completion_tokens"), st.integers(max_value=-1)),
                  st.tuples(st.just("reasoning_effort"), st.text(max_size=5).filter(
                      lambda t: t not in ("", "high", "medium", "low", "none")))]
    return st.one_of(pairs)


def post(client, path: str, value: Any):
    return client.post(path, content=json.dumps(value, allow_nan=True).encode(),
                       headers={"Content-Type": "application/json"})


@FUZZ
@given(data=st.data(), path=st.sampled_from(PATHS), stream=st.booleans())
@example(data=None, path="/v1/chat/completions", stream=True)  # max_tokens -5 ran on: 200
def test_a_bad_field_is_refused_in_openai_shape(sim_rig, gateway, data, path, stream):
    if data is None:
        field, value = "max_tokens", -5
    else:
        field, value = data.draw(_field(path), label="field")
    extra = {"stream": stream} if path != "/v1/embeddings" else {}
    r = post(gateway, path, {**BASES[path], **extra, field: value})
    sim_rig.refused(r, openai=True)
    assert "text/event-stream" not in r.headers["content-type"]


@FUZZ
@given(path=st.sampled_from(PATHS), cut=st.integers(min_value=0, max_value=120),
       junk=st.sampled_from([b"", b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]))
@example(path="/v1/embeddings", cut=0, junk=b"\xff")  # in an unknown field: the cache key's 500
def test_truncated_or_broken_bodies_are_refused_in_openai_shape(sim_rig, gateway, path, cut,
                                                                 junk):
    full = json.dumps({**BASES[path], "user": "@@"}).encode()
    raw = full.replace(b"@@", junk) if junk else full[: min(cut, len(full) - 1)]
    sim_rig.refused(gateway.post(path, content=raw), openai=True)


@FUZZ
@given(name=st.text(st.characters(min_codepoint=0x21, exclude_characters="\x7f"), min_size=1,
                   max_size=60).filter(lambda n: n.strip("/") == n and "?" not in n
                                                     and "#" not in n))
def test_unknown_models_are_404_in_openai_shape(sim_rig, gateway, name):
    r = gateway.get("/v1/models/" + name)
    if r.status_code != 404:  # a name that is MODEL after normalisation
        assert r.status_code == 200, r.text[:300]
        return
    sim_rig.refused(r, openai=True)


@pytest.mark.parametrize("path", PATHS)
def test_a_good_openai_request_still_answers(gateway, path):
    r = gateway.post(path, json=BASES[path])
    assert r.status_code == 200, r.text[:300]
