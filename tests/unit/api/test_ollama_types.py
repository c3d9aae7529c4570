import math

import pytest

from ollamamax.api import ollama_types as ot
from ollamamax.errors import BadRequest


def test_chat_decodes_and_defaults_to_streaming():
    req = ot.decode(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}],'
                    b' "unknown_field": 1}', ot.ChatRequest)
    assert req.model_name == "m"
    assert ot.wants_stream(req)
    assert req.messages[0].content == "hi"


@pytest.mark.parametrize(("body", "words"), [
    (b"", "missing request body"),
    (b"{not json", "invalid JSON"),
    (b'{"messages": []}', "model is required"),
    (b'{"model": 5}', "Expected `str | null`, got `int`"),
    (b'{"model": "m", "stream": "yes"}', "stream"),
    (b'{"model": "m", "messages": [{"content": "x"}]}', "role"),
    (b'{"model": "m", "options": {"temperature": "hot"}}', "temperature"),
    (b'{"model": "m", "keep_alive": "5 minutes"}', "keep_alive"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x", "images": ["%%%"]}]}',
     "base64"),
    (b"[1, 2]", "Expected `object`"),
])
def test_bad_chat_bodies_are_bad_requests(body, words):
    with pytest.raises(BadRequest, match=words):
        ot.decode(body, ot.ChatRequest)


def test_legacy_name_field_is_accepted():
    assert ot.decode(b'{"name": "m"}', ot.ShowRequest).model_name == "m"


def test_embed_inputs():
    assert ot.decode(b'{"model": "m", "input": "a"}', ot.EmbedRequest).inputs == ["a"]
    assert ot.decode(b'{"model": "m", "input": ["a", "b"]}', ot.EmbedRequest).inputs == ["a", "b"]
    with pytest.raises(BadRequest, match="dimensions"):
        ot.decode(b'{"model": "m", "input": "a", "dimensions": 0}', ot.EmbedRequest)


@pytest.mark.parametrize(("value", "seconds"), [
    (None, 300.0), ("5m", 300.0), ("1h30m", 5400.0), ("10s", 10.0), ("250ms", 0.25), (0, 0.0),
    ("0", 0.0), (60, 60.0), (-1, math.inf), ("-1m", math.inf), ("1.5h", 5400.0)])
def test_keep_alive_durations(value, seconds):
    assert ot.keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 m", "m", "", True])
def test_bad_keep_alive(value):
    with pytest.raises(BadRequest):
        ot.keep_alive_seconds(value)
