"""Property: every bad Ollama request body is a 4xx in ``{"error": "..."}`` shape, at the
gateway and at the node alike; never a 5xx, a traceback or a crashed task.

Bodies are built by hand with `json.dumps` so they can hold what a JSON library would refuse
to write: numbers beyond int64, NaN and Infinity, truncated text and broken UTF-8.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

MODEL = "m:1b"
# derandomized: the same examples on every run, so the suite cannot flake
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

BASES: dict[str, dict[str, Any]] = {
    "/api/chat": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                  "stream": False},
    "/api/generate": {"model": MODEL, "prompt": "hi", "stream": False},
    "/api/embed": {"model": MODEL, "input": "hi"},
    "/api/embeddings": {"model": MODEL, "prompt": "hi"},
    "/api/show": {"model": MODEL},
}
PATHS = sorted(BASES)

# -- values ---------------------------------------------------------------------------------

beyond_int64 = st.integers(min_value=2**63) | st.integers(max_value=-(2**63) - 1)
not_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])
scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=6)
finite_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False,
                                                                       allow_infinity=False)
    | st.text(max_size=20), lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
not_strings = json_values.filter(lambda v: not isinstance(v, str) and v is not None)
# a JSON float (2.0 too) is not an int: Go's decoder and msgspec agree
not_ints = (st.text(max_size=8) | st.booleans() | st.lists(st.integers(), max_size=2)
            | st.floats(allow_nan=True, allow_infinity=True)
            | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
not_numbers = (st.text(max_size=8) | st.booleans() | st.lists(st.floats(), max_size=2)
               | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2) | not_finite)
# keep_alive: strings without a digit can never be a duration; numbers past Go's ~292 years
bad_keep_alive = (st.text(alphabet=st.characters(exclude_categories=["Nd"]), max_size=12)
                  | st.floats(min_value=1e10, max_value=1e300) | st.booleans() | not_finite
                  | st.lists(st.integers(), max_size=2) | st.just("99999999999h"))

# option -> values no engine can honour (wrong type, out of int64, or a meaningless negative)
INT_OPTIONS = {"num_ctx": 1, "num_batch": 1, "num_thread": 0, "num_keep": -1, "seed": None,
               "num_predict": -2, "top_k": 0, "repeat_last_n": -1, "mirostat": 0}
UNIT_OPTIONS = ("top_p", "min_p", "typical_p")
NON_NEGATIVE_OPTIONS = ("temperature", "repeat_penalty", "mirostat_tau", "mirostat_eta")


@st.composite
def bad_option(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["int", "unit", "non-negative", "any-float", "stop"]))
    if kind == "int":
        name = draw(st.sampled_from(sorted(INT_OPTIONS)))
        low = INT_OPTIONS[name]
        candidates = not_ints | beyond_int64
        if low is not None:
            candidates |= st.integers(-(2**40), low - 1)
        if name == "mirostat":
            candidates |= st.integers(3, 2**40)
        return name, draw(candidates)
    if kind == "unit":
        out_of_range = st.floats(max_value=-1e-9) | st.floats(min_value=1.000001)
        return draw(st.sampled_from(UNIT_OPTIONS)), draw(not_numbers | out_of_range)
    if kind == "non-negative":
        return draw(st.sampled_from(NON_NEGATIVE_OPTIONS)), draw(
            not_numbers | st.floats(max_value=-1e-9))
    if kind == "any-float":
        return draw(st.sampled_from(["presence_penalty", "frequency_penalty"])), draw(not_numbers)
    return "stop", draw(st.integers() | st.lists(st.integers() | st.none(), min_size=1,
                                                 max_size=3) | st.dictionaries(
        st.text(max_size=2), st.text(max_size=2), min_size=1, max_size=2))


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
not_base64 = st.text(min_size=1, max_size=12).filter(lambda s: not _is_base64(s))
not_images = st.binary(min_size=1, max_size=40).filter(
    lambda b: not b.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF"))).map(
    lambda b: base64.b64encode(b).decode())
bad_images = st.lists(not_base64 | not_images | not_strings, min_size=1, max_size=2)
ROLES = ("system", "user", "assistant", "tool", "developer")
bad_roles = st.text(max_size=12).filter(lambda r: r not in ROLES) | not_strings


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return True


@st.composite
def bad_message(draw: st.DrawFn) -> Any:
    message: dict[str, Any] = {"role": "user", "content": "hi"}
    kind = draw(st.sampled_from(["role", "content", "images", "tool_calls", "not-an-object"]))
    if kind == "role":
        message["role"] = draw(bad_roles)
    elif kind == "content":
        message["content"] = draw(not_strings)
    elif kind == "images":
        message["images"] = draw(bad_images)
    elif kind == "tool_calls":
        message["role"] = "assistant"
        message["tool_calls"] = draw(not_strings.filter(lambda v: v not in ([], {}))
                                     | st.just([{"function": {"name": 5}}])
                                     | st.just([{"function": {"name": "f", "arguments": "x"}}]))
    else:
        return draw(not_strings.filter(lambda v: not isinstance(v, dict)))
    return message


def _bad_fields(path: str) -> st.SearchStrategy[tuple[str, Any]]:
    """(field, value) pairs that make `path`'s body invalid whatever else it holds."""
    common = [st.tuples(st.just("model"), not_strings.filter(lambda v: v != "")),
              st.tuples(st.just("model"), st.sampled_from(["", "../../etc/passwd", "a b",
                                                           "m:1b\x00", ":", "x" * 300]))]
    if path != "/api/show":
        common += [st.tuples(st.just("options"), not_strings.filter(
                       lambda v: not isinstance(v, dict))),
                   st.tuples(st.just("keep_alive"), bad_keep_alive)]
    if path in ("/api/chat", "/api/generate"):
        common += [st.tuples(st.just("stream"), not_strings.filter(
                       lambda v: not isinstance(v, bool))),
                   st.tuples(st.just("format"), st.integers() | st.booleans()
                             | st.lists(st.integers(), max_size=2)),
                   st.tuples(st.just("think"), st.integers() | st.lists(st.text(), max_size=2))]
    if path == "/api/chat":
        common += [st.tuples(st.just("messages"), st.lists(bad_message(), min_size=1,
                                                           max_size=2)),
                   st.tuples(st.just("messages"), not_strings.filter(
                       lambda v: not isinstance(v, list))),
                   st.tuples(st.just("tools"), st.lists(st.just({"x": 1})
                                                        | st.just({"function": {"name": 3}})
                                                        | st.integers(), min_size=1,
                                                        max_size=2))]
    if path == "/api/generate":
        common += [st.tuples(st.just("images"), bad_images),
                   st.tuples(st.just("prompt"), not_strings),
                   st.tuples(st.just("context"), st.lists(beyond_int64 | st.text(max_size=3),
                                                          min_size=1, max_size=2))]
    if path == "/api/embed":
        common += [st.tuples(st.just("input"), st.integers() | st.dictionaries(
                       st.text(max_size=2), st.integers(), min_size=1, max_size=2)
                       | st.lists(st.integers() | st.none(), min_size=1, max_size=3)),
                   st.tuples(st.just("dimensions"), st.integers(max_value=0) | beyond_int64
                             | not_ints)]
    if path == "/api/embeddings":
        common.append(st.tuples(st.just("prompt"), not_strings))
    return st.one_of(common)


def body(value: Any) -> bytes:
    """JSON as a lenient writer would put it: NaN, Infinity and huge integers included."""
    return json.dumps(value, allow_nan=True).encode()


def post(client: httpx.Client, path: str, content: bytes,
         content_type: str = "application/json") -> httpx.Response:
    return client.post(path, content=content, headers={"Content-Type": content_type})


@pytest.fixture(scope="module", params=["gateway", "node"])
def target(request) -> httpx.Client:
    """The same properties hold at the gateway and at the node (which answers the Ollama API
    of its own engine, and must not trust the gateway to have checked)."""
    return request.getfixturevalue(request.param)


# -- properties -----------------------------------------------------------------------------


@FUZZ
@given(data=st.data(), path=st.sampled_from(PATHS))
@example(data=None, path="/api/generate")  # keep_alive 1e20: /api/ps failed with a 500 after
def test_a_bad_field_is_refused(sim_rig, target, data, path):
    if data is None:
        field, value = "keep_alive", 1e20
    else:
        field, value = data.draw(_bad_fields(path), label="field")
    r = post(target, path, body({**BASES[path], field: value}))
    sim_rig.refused(r)
    assert target.get("/api/ps").status_code == 200


@FUZZ
@given(path=st.sampled_from(["/api/chat", "/api/generate", "/api/embed", "/api/embeddings"]),
       option=bad_option(), stream=st.booleans())
@example(path="/api/generate", option=("num_predict", 2**70), stream=False)  # ran forever
@example(path="/api/generate", option=("num_ctx", -5), stream=True)
@example(path="/api/chat", option=("top_k", -1), stream=True)
@example(path="/api/generate", option=("temperature", float("nan")), stream=False)
@example(path="/api/generate", option=("repeat_penalty", 0), stream=False)  # llama.cpp: 400
def test_a_bad_option_is_refused_before_any_stream_starts(sim_rig, target, path, option, stream):
    name, value = option
    r = post(target, path, body({**BASES[path], "stream": stream, "options": {name: value}}))
    sentence = sim_rig.refused(r)
    assert r.status_code == 400 and "x-ndjson" not in r.headers["content-type"]
    assert name in sentence or "JSON" in sentence, sentence


@FUZZ
@given(path=st.sampled_from(PATHS), cut=st.integers(min_value=0, max_value=200))
def test_truncated_json_is_refused(sim_rig, target, path, cut):
    full = body({**BASES[path], "options": {"temperature": 0.5}, "keep_alive": "5m"})
    sim_rig.refused(post(target, path, full[: min(cut, len(full) - 1)]))


def _broken_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return b'"' not in data and b"\\" not in data
    return False


@FUZZ
@given(path=st.sampled_from(PATHS), junk=st.binary(min_size=1, max_size=6).filter(
    _broken_utf8), where=st.sampled_from(["model", "value"]))
@example(path="/api/generate", junk=b"\xff\xfe", where="value")  # was a 500
def test_broken_utf8_is_refused(sim_rig, target, path, junk, where):
    text_field = {"/api/chat": "model", "/api/show": "model"}.get(path, "prompt")
    if path == "/api/embed":
        text_field = "input"
    field = "model" if where == "model" else text_field
    raw = body({**BASES[path], field: "@@"}).replace(b"@@", junk)
    sim_rig.refused(post(target, path, raw))


@FUZZ
@given(path=st.sampled_from(PATHS),
       value=json_values.filter(lambda v: not isinstance(v, dict)) | st.binary(max_size=30))
def test_bodies_that_are_not_a_json_object_are_refused(sim_rig, target, path, value):
    raw = value if isinstance(value, bytes) else body(value)
    r = post(target, path, raw)
    if raw.strip().startswith(b"{"):
        sim_rig.not_5xx(r)  # random bytes may happen to be an object
    else:
        sim_rig.refused(r)


@FUZZ
@given(path=st.sampled_from(PATHS),
       extra=st.dictionaries(st.text(min_size=1, max_size=10).map(lambda k: "x_" + k),
                             finite_json_values, min_size=1, max_size=4),
       content_type=st.sampled_from(["application/json", "text/plain", "", "application/x-www-"
                                     "form-urlencoded", "multipart/form-data; boundary=x",
                                     "application/json; charset=latin-1"]))
def test_unknown_fields_and_any_content_type_are_ignored_as_ollama_does(
        target, path, extra, content_type):
    r = post(target, path, body({**BASES[path], **extra}), content_type)
    assert r.status_code == 200, r.text[:500]


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(path=st.sampled_from(PATHS), field=st.sampled_from(
    ["model", "keep_alive", "prompt", "role", "image", "x_unknown", "stop"]))
@example(path="/api/chat", field="model")  # the whole name came back in the error
@example(path="/api/chat", field="role")
def test_megabyte_strings_within_the_body_cap_never_fail_the_server(sim_rig, target, path,
                                                                    field):
    huge = "x" * 10**6
    payload = dict(BASES[path])
    if field == "role":
        payload["messages"] = [{"role": huge, "content": "hi"}]
    elif field == "image":
        payload["images"] = [huge]
        payload["messages"] = [{"role": "user", "content": "hi", "images": [huge]}]
    elif field == "stop":
        payload["options"] = {"stop": [huge]}
    else:
        payload[field] = huge
    r = post(target, path, body(payload))
    sim_rig.not_5xx(r)
    assert len(r.content) < 10**5 or r.status_code == 200  # errors quote, never echo it all


def test_the_service_is_unharmed_afterwards(sim_rig, target):
    sim_rig.assert_unharmed(target)
    assert target.get("/api/ps").status_code == 200
