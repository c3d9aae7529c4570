"""OpenAI <-> Ollama translation, checked against Ollama's mapping and the real openai client.

Expected shapes follow ollama/ollama openai/openai.go and middleware/openai.go (commit
077a50ba); every answer is also parsed with the official client's own types, and a few
round trips go through the real `openai.OpenAI` client over an in-memory transport.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import httpx2
import msgspec
import numpy as np
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import omit
from openai._models import construct_type
from openai.lib._parsing._embeddings import parse_embedding_response
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ollamamax.api import ollama_types
from ollamamax.api.openai_compat import (
    DONE_EVENT,
    ChatStream,
    CompletionStream,
    ReplyContext,
    chat_completion,
    chat_request,
    completion_request,
    embedding_list,
    embedding_request,
    error_object,
    model_list,
    model_object,
    owned_by,
    text_completion,
)
from ollamamax.errors import BadRequest

CREATED = 1_700_000_000
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake image bytes").decode()


def enc(value: Any) -> bytes:
    return msgspec.json.encode(value)


def chat(body: dict[str, Any], serial: int = 7) -> dict[str, Any]:
    return msgspec.json.decode(chat_request(enc(body), created=CREATED, serial=serial).body)


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], **fields}


def events(data: bytes) -> list[Any]:
    """Split server-sent events into decoded JSON payloads (and the literal "[DONE]")."""
    assert data.endswith(b"\n\n") or not data
    out: list[Any] = []
    for frame in data.split(b"\n\n")[:-1]:
        assert frame.startswith(b"data: ")
        payload = frame[len(b"data: "):]
        out.append("[DONE]" if payload == b"[DONE]" else msgspec.json.decode(payload))
    return out


# --- chat requests -------------------------------------------------------------------------


def test_chat_minimal_request_gets_openai_defaults() -> None:
    call = chat_request(enc(chat_body()), created=CREATED, serial=42)
    assert call.path == "/api/chat"
    assert msgspec.json.decode(call.body) == {
        "model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False,
        "options": {"temperature": 1.0, "top_p": 1.0}}
    assert call.reply == ReplyContext(model="llama3", id="chatcmpl-42", created=CREATED,
                                      stream=False, include_usage=False)


def test_chat_sampling_options_map_to_ollama_options() -> None:
    body = chat(chat_body(temperature=0.2, top_p=0.9, seed=11, stop="END", max_tokens=64,
                          frequency_penalty=0.5, presence_penalty=-0.5))
    assert body["options"] == {"stop": ["END"], "num_predict": 64, "temperature": 0.2,
                               "seed": 11, "frequency_penalty": 0.5, "presence_penalty": -0.5,
                               "top_p": 0.9}


def test_chat_stop_list_and_max_completion_tokens() -> None:
    body = chat(chat_body(stop=["a", "b"], max_completion_tokens=9))
    assert body["options"]["stop"] == ["a", "b"]
    assert body["options"]["num_predict"] == 9


def test_max_tokens_wins_over_max_completion_tokens_as_in_ollama() -> None:
    assert chat(chat_body(max_tokens=5, max_completion_tokens=9))["options"]["num_predict"] == 5


def test_null_fields_count_as_absent() -> None:
    body = chat(chat_body(temperature=None, stop=None, stream=None, tools=None, seed=None))
    assert body["options"] == {"temperature": 1.0, "top_p": 1.0}
    assert body["stream"] is False and "tools" not in body


def test_n_and_unknown_fields_are_ignored_as_ollama_does() -> None:
    body = chat(chat_body(n=3, user="me", logit_bias={"1": 2}, parallel_tool_calls=False))
    assert set(body) == {"model", "messages", "stream", "options"}


@pytest.mark.parametrize(("response_format", "expected"), [
    ({"type": "json_object"}, "json"),
    ({"type": " JSON_OBJECT "}, "json"),
    ({"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
        "type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}}},
     {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}),
])
def test_response_format_becomes_format(response_format: dict[str, Any], expected: Any) -> None:
    assert chat(chat_body(response_format=response_format))["format"] == expected


def test_json_schema_is_forwarded_byte_for_byte() -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"x"}],' \
          b'"response_format":{"type":"json_schema","json_schema":{"schema":{"z":1,"a":2}}}}'
    assert b'"format":{"z":1,"a":2}' in chat_request(raw, created=0, serial=0).body


@pytest.mark.parametrize("response_format", [{"type": "text"}, {"type": "json_schema"}])
def test_response_format_without_constraint_sends_no_format(
        response_format: dict[str, Any]) -> None:
    assert "format" not in chat(chat_body(response_format=response_format))


def test_tools_pass_through_and_empty_tools_are_dropped() -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    assert chat(chat_body(tools=tools))["tools"] == tools
    assert "tools" not in chat(chat_body(tools=[]))


def test_assistant_tool_calls_and_tool_results() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city": "Paris", "days": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "name": "clock", "content": "noon"},
    ]
    assert chat(chat_body(messages=messages))["messages"] == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "function": {"name": "weather",
                                          "arguments": {"city": "Paris", "days": 2}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "weather", "tool_call_id": "call_1"},
        {"role": "tool", "content": "noon", "tool_name": "clock"},
    ]


def test_reasoning_in_history_becomes_thinking() -> None:
    messages = [{"role": "assistant", "content": "4", "reasoning": "2+2"}]
    assert chat(chat_body(messages=messages))["messages"] == [
        {"role": "assistant", "content": "4", "thinking": "2+2"}]


@pytest.mark.parametrize("arguments", ["not json", "", "[1, 2]", "5"])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    messages = [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}]}]
    with pytest.raises(BadRequest, match="invalid tool call arguments"):
        chat(chat_body(messages=messages))


def test_null_content_needs_tool_calls() -> None:
    with pytest.raises(BadRequest, match=r"content type: null in messages\[0\]"):
        chat(chat_body(messages=[{"role": "user", "content": None}]))


def test_content_parts_become_one_message_each_as_in_ollama() -> None:
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "what is"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "this?"},
        {"type": "image_url", "image_url": f"data:;base64,{PNG}"},
    ]}]
    assert chat(chat_body(messages=messages))["messages"] == [
        {"role": "user", "content": "what is"},
        {"role": "user", "content": "", "images": [PNG]},
        {"role": "user", "content": "this?"},
        {"role": "user", "content": "", "images": [PNG]},
    ]


def test_tool_calls_attach_to_the_last_part() -> None:
    messages = [{"role": "assistant", "content": [{"type": "text", "text": "calling"}],
                 "tool_calls": [{"id": "c1", "type": "function",
                                 "function": {"name": "f", "arguments": "{}"}}]}]
    assert chat(chat_body(messages=messages))["messages"] == [
        {"role": "assistant", "content": "calling",
         "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {}}}]}]


@pytest.mark.parametrize(("url", "error"), [
    ("https://example.com/cat.png", "image URLs are not currently supported"),
    ("http://example.com/cat.png", "image URLs are not currently supported"),
    ("data:image/gif;base64,R0lGOD", "invalid image input"),
    ("data:image/png;base64,not base64!", "invalid image input"),
    ("data:image/png;base64,YQ", "invalid image input"),
])
def test_bad_images_are_refused(url: str, error: str) -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    with pytest.raises(BadRequest, match=error):
        chat(chat_body(messages=messages))


@pytest.mark.parametrize("part", [
    {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
    {"type": "text", "text": 5},
    {"text": "no type"},
    {"type": "image_url", "image_url": {"detail": "high"}},
])
def test_bad_content_parts_are_refused(part: dict[str, Any]) -> None:
    with pytest.raises(BadRequest, match="invalid message format"):
        chat(chat_body(messages=[{"role": "user", "content": [part]}]))


def test_stream_and_include_usage_reach_the_reply_context() -> None:
    call = chat_request(enc(chat_body(stream=True, stream_options={"include_usage": True})),
                        created=CREATED, serial=1)
    assert msgspec.json.decode(call.body)["stream"] is True
    assert call.reply.stream and call.reply.include_usage


@pytest.mark.parametrize(("fields", "think"), [
    ({"reasoning_effort": "high"}, "high"),
    ({"reasoning_effort": "none"}, False),
    ({"reasoning": {"effort": "low"}, "reasoning_effort": "high"}, "low"),
])
def test_reasoning_effort_becomes_think(fields: dict[str, Any], think: Any) -> None:
    assert chat(chat_body(**fields))["think"] == think


def test_unknown_reasoning_effort_is_refused() -> None:
    with pytest.raises(BadRequest, match="invalid reasoning value: 'max'"):
        chat(chat_body(reasoning_effort="max"))


def test_logprobs_pass_through() -> None:
    body = chat(chat_body(logprobs=True, top_logprobs=3))
    assert body["logprobs"] is True and body["top_logprobs"] == 3


def test_chat_body_is_a_valid_ollama_chat_request() -> None:
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}}]}]
    call = chat_request(enc(chat_body(messages=messages, stop=["x"], seed=1, max_tokens=3,
                                      response_format={"type": "json_object"})),
                        created=0, serial=0)
    request = ollama_types.decode(call.body, ollama_types.ChatRequest)
    assert request.model_name == "llama3" and request.format == "json"
    assert request.messages is not None and request.messages[1].images == [
        base64.b64decode(PNG)]
    assert request.options is not None and request.options.num_predict == 3


@pytest.mark.parametrize(("body", "error"), [
    (b"", "missing request body"),
    (b"{not json", "invalid JSON"),
    (b"[1, 2]", "Expected `object`"),
    (enc({"messages": [{"role": "user", "content": "x"}]}), "model is required"),
    (enc({"model": "", "messages": [{"role": "user", "content": "x"}]}), "model is required"),
    (enc({"model": "m", "messages": []}), "is too short - 'messages'"),
    (enc({"model": "m"}), "is too short - 'messages'"),
    (enc({"model": 5, "messages": []}), r"\$\.model"),
    (enc(chat_body(temperature="hot")), r"\$\.temperature"),
    (enc(chat_body(seed=1.5)), r"\$\.seed"),
    (enc(chat_body(stop=[1, 2])), r"\$\.stop"),
    (enc(chat_body(stream="yes")), r"\$\.stream"),
    (enc({"model": "m", "messages": [{"role": 1, "content": "x"}]}),
     r"\$\.messages\[0\]\.role"),
    (enc({"model": "m", "messages": [{"role": "user", "content": 7}]}),
     r"\$\.messages\[0\]\.content"),
])
def test_chat_validation_errors(body: bytes, error: str) -> None:
    with pytest.raises(BadRequest, match=error):
        chat_request(body, created=0, serial=0)


# --- completion and embedding requests ---------------------------------------------------------


def test_completion_request_mirrors_ollama_defaults() -> None:
    call = completion_request(enc({"model": "m", "prompt": "Once", "suffix": "end",
                                   "max_tokens": 8, "stop": ["\n"], "seed": 3, "echo": True,
                                   "n": 2}), created=CREATED, serial=5)
    assert call.path == "/api/generate"
    assert msgspec.json.decode(call.body) == {
        "model": "m", "prompt": "Once", "suffix": "end", "stream": False,
        "options": {"stop": ["\n"], "num_predict": 8, "temperature": 1.0, "seed": 3,
                    "frequency_penalty": 0.0, "presence_penalty": 0.0, "top_p": 1.0}}
    assert call.reply.id == "cmpl-5" and call.reply.created == CREATED
    assert ollama_types.decode(call.body, ollama_types.GenerateRequest).suffix == "end"


def test_completion_top_p_zero_means_default_as_in_ollama() -> None:
    call = completion_request(enc({"model": "m", "prompt": "x", "top_p": 0, "temperature": 0,
                                   "stream": True}), created=0, serial=0)
    body = msgspec.json.decode(call.body)
    assert body["options"]["top_p"] == 1.0 and body["options"]["temperature"] == 0
    assert body["stream"] is True and call.reply.stream


@pytest.mark.parametrize("prompt", [["a", "b"], [1, 2, 3], {"text": "x"}])
def test_completion_prompt_must_be_a_string(prompt: Any) -> None:
    with pytest.raises(BadRequest, match="prompt must be a string"):
        completion_request(enc({"model": "m", "prompt": prompt}), created=0, serial=0)


@pytest.mark.parametrize(("given_input", "sent"), [
    ("hello", "hello"), (["a", "b"], ["a", "b"]), ("", [""])])
def test_embedding_inputs(given_input: Any, sent: Any) -> None:
    call = embedding_request(enc({"model": "e", "input": given_input}))
    assert call.path == "/api/embed"
    assert msgspec.json.decode(call.body) == {"model": "e", "input": sent}
    assert call.reply == ReplyContext(model="e", encoding_format="float")
    assert ollama_types.decode(call.body, ollama_types.EmbedRequest).inputs == (
        [sent] if isinstance(sent, str) else sent)


@pytest.mark.parametrize(("given_input", "error"), [
    (None, "invalid input"), ([], "invalid input"), ([1, 2], "invalid input type"),
    ([[1, 2], [3]], "invalid input type"), (5, "invalid input type"),
    (["a", 1], "invalid input type")])
def test_bad_embedding_inputs(given_input: Any, error: str) -> None:
    body = {"model": "e"} if given_input is None else {"model": "e", "input": given_input}
    with pytest.raises(BadRequest, match=error):
        embedding_request(enc(body))


def test_embedding_dimensions_and_encoding_format() -> None:
    call = embedding_request(enc({"model": "e", "input": "x", "dimensions": 64,
                                  "encoding_format": "BASE64"}))
    assert msgspec.json.decode(call.body)["dimensions"] == 64
    assert call.reply.encoding_format == "base64"
    assert "dimensions" not in msgspec.json.decode(
        embedding_request(enc({"model": "e", "input": "x", "dimensions": 0})).body)
    with pytest.raises(BadRequest, match="dimensions must be a positive number"):
        embedding_request(enc({"model": "e", "input": "x", "dimensions": -1}))
    with pytest.raises(BadRequest, match=r"Invalid value for 'encoding_format' = int8"):
        embedding_request(enc({"model": "e", "input": "x", "encoding_format": "int8"}))
    with pytest.raises(BadRequest, match="model is required"):
        embedding_request(enc({"input": "x"}))


# --- chat answers ------------------------------------------------------------------------------

CHAT_REPLY = ReplyContext(model="llama3", id="chatcmpl-7", created=CREATED)


def ollama_chat(content: str = "", done: bool = False, **fields: Any) -> dict[str, Any]:
    message = {"role": "assistant", "content": content, **fields.pop("message", {})}
    return {"model": "llama3", "created_at": "2024-07-22T20:33:28.123648789Z",
            "message": message, "done": done, **fields}


def test_chat_completion_shape() -> None:
    answer = ollama_chat("Hello!", done=True, done_reason="stop", prompt_eval_count=12,
                         eval_count=3, total_duration=5)
    result = chat_completion(answer, CHAT_REPLY)
    assert result == {
        "id": "chatcmpl-7", "object": "chat.completion", "created": 1721680408,
        "model": "llama3", "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}
    parsed = ChatCompletion.model_validate(result)
    assert parsed.choices[0].message.content == "Hello!" and parsed.usage is not None


def test_chat_completion_tool_calls() -> None:
    answer = ollama_chat(done=True, done_reason="stop", message={"tool_calls": [
        {"id": "call_a", "function": {"index": 0, "name": "weather",
                                      "arguments": {"city": "Paris"}}},
        {"function": {"name": "clock", "arguments": {}}}]})
    result = chat_completion(answer, CHAT_REPLY)
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [
        {"id": "call_a", "index": 0, "type": "function",
         "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
        {"id": "", "index": 1, "type": "function",
         "function": {"name": "clock", "arguments": "{}"}}]
    parsed = ChatCompletion.model_validate(result)
    calls = parsed.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.arguments == '{"city":"Paris"}'  # type: ignore[union-attr]


def test_chat_completion_reasoning_length_and_logprobs() -> None:
    logprobs = [{"token": "4", "logprob": -0.1, "bytes": [52], "top_logprobs": []}]
    answer = ollama_chat("4", done=True, done_reason="length", logprobs=logprobs,
                         message={"thinking": "2+2"})
    result = chat_completion(answer, CHAT_REPLY)
    assert result["choices"][0]["message"] == {"role": "assistant", "content": "4",
                                               "reasoning": "2+2"}
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["choices"][0]["logprobs"] == {"content": logprobs}
    ChatCompletion.model_validate(result)


def test_chat_completion_without_created_at_uses_the_request_time() -> None:
    answer = {"model": "m", "message": {"role": "assistant", "content": "x"}, "done": True,
              "done_reason": "stop"}
    assert chat_completion(answer, CHAT_REPLY)["created"] == CREATED


def stream_chat(chunks: list[dict[str, Any]], include_usage: bool = False) -> list[Any]:
    stream = ChatStream(ReplyContext(model="llama3", id="chatcmpl-9", created=CREATED,
                                     stream=True, include_usage=include_usage))
    data = b"".join(stream.chunk(chunk) for chunk in chunks) + stream.done()
    return events(data)


def test_chat_stream_chunks_and_done() -> None:
    out = stream_chat([ollama_chat("Hel"), ollama_chat("lo"),
                       ollama_chat(done=True, done_reason="stop", eval_count=2)])
    assert out[0] == {"id": "chatcmpl-9", "object": "chat.completion.chunk",
                      "created": CREATED, "model": "llama3", "system_fingerprint": "fp_ollama",
                      "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"},
                                   "finish_reason": None}]}
    assert [e["choices"][0]["finish_reason"] for e in out[:3]] == [None, None, "stop"]
    assert out[3] == "[DONE]" and len(out) == 4
    for event in out[:3]:
        ChatCompletionChunk.model_validate(event)


def test_chat_stream_usage_chunk() -> None:
    out = stream_chat([ollama_chat("x"), ollama_chat(done=True, done_reason="length",
                                                     prompt_eval_count=5, eval_count=1)],
                      include_usage=True)
    usage = out[2]
    assert usage["choices"] == [] and usage["id"] == "chatcmpl-9"
    assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    assert "usage" not in out[0] and out[3] == "[DONE]"
    assert ChatCompletionChunk.model_validate(usage).usage is not None


def test_chat_stream_tool_calls_finish_with_tool_calls() -> None:
    out = stream_chat([
        ollama_chat(message={"tool_calls": [{"id": "c1", "function": {
            "index": 0, "name": "weather", "arguments": {"city": "Oslo"}}}]}),
        ollama_chat(done=True, done_reason="stop")])
    delta = out[0]["choices"][0]["delta"]
    assert delta["tool_calls"] == [{"id": "c1", "index": 0, "type": "function", "function": {
        "name": "weather", "arguments": '{"city":"Oslo"}'}}]
    assert out[1]["choices"][0]["finish_reason"] == "tool_calls"


def test_streamed_tool_calls_without_indices_are_numbered_and_stay_apart() -> None:
    chunks = [ollama_chat(message={"tool_calls": [{"id": "a", "function": {
                  "name": "f", "arguments": {"x": 1}}}]}),
              ollama_chat(message={"tool_calls": [{"id": "b", "function": {
                  "name": "g", "arguments": {"y": 2}}}]}),
              ollama_chat(done=True, done_reason="stop")]
    state = ChatCompletionStreamState()
    for event in stream_chat(chunks)[:-1]:
        state.handle_chunk(ChatCompletionChunk.model_validate(event))
    final = state.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        ("a", "f", '{"x":1}'), ("b", "g", '{"y":2}')]
    assert final.choices[0].finish_reason == "tool_calls"


def test_chat_stream_splits_reasoning_from_content_as_ollama_does() -> None:
    out = stream_chat([ollama_chat("Answer", done=True, done_reason="stop",
                                   message={"thinking": "hmm"},
                                   logprobs=[{"token": "A", "logprob": -1.0,
                                              "top_logprobs": []}])])
    reasoning, content = out[0]["choices"][0], out[1]["choices"][0]
    assert reasoning["delta"] == {"role": "assistant", "content": "", "reasoning": "hmm"}
    assert reasoning["finish_reason"] is None and "logprobs" in reasoning
    assert content["delta"] == {"role": "assistant", "content": "Answer"}
    assert content["finish_reason"] == "stop" and "logprobs" not in content
    assert out[2] == "[DONE]"


def test_reasoning_only_chunk_is_not_split() -> None:
    out = stream_chat([ollama_chat(message={"thinking": "hmm"}),
                       ollama_chat(done=True, done_reason="stop")])
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": "",
                                             "reasoning": "hmm"}
    assert len(out) == 3


def test_upstream_error_mid_stream_becomes_an_openai_error_event() -> None:
    stream = ChatStream(ReplyContext(model="m", id="chatcmpl-1", created=0, stream=True))
    first = stream.chunk(ollama_chat("partial"))
    failed = stream.chunk({"error": "llama runner process has terminated"})
    assert events(failed) == [{"error": {"message": "llama runner process has terminated",
                                         "type": "api_error", "param": None, "code": None}}]
    assert DONE_EVENT not in failed and stream.finished
    assert stream.chunk(ollama_chat("late")) == b"" and stream.done() == b""
    assert first.startswith(b"data: ")


def test_truncated_stream_ends_with_an_error_not_silence() -> None:
    stream = ChatStream(ReplyContext(model="m", id="chatcmpl-1", created=0, stream=True))
    stream.chunk(ollama_chat("partial"))
    (event,) = events(stream.done())
    assert event["error"]["type"] == "api_error"
    assert "ended before the answer was complete" in event["error"]["message"]


def test_gateway_side_error_event_and_only_one_ending() -> None:
    stream = ChatStream(ReplyContext(model="m", stream=True))
    assert events(stream.error("node-3 went away")) == [error_object(500, "node-3 went away")]
    assert stream.error("again") == b"" and stream.done() == b""


def test_error_object_types_follow_ollama() -> None:
    assert error_object(400, "bad")["error"]["type"] == "invalid_request_error"
    assert error_object(404, "gone")["error"]["type"] == "not_found_error"
    assert error_object(503, "busy") == {"error": {"message": "busy", "type": "api_error",
                                                   "param": None, "code": None}}


# --- completion answers ------------------------------------------------------------------------

GEN_REPLY = ReplyContext(model="m", id="cmpl-3", created=CREATED, stream=True)


def ollama_generate(response: str = "", done: bool = False, **fields: Any) -> dict[str, Any]:
    return {"model": "m", "created_at": "2024-07-22T20:33:28Z", "response": response,
            "done": done, **fields}


def test_text_completion_shape() -> None:
    result = text_completion(ollama_generate(" upon a time", done=True, done_reason="stop",
                                             prompt_eval_count=2, eval_count=4), GEN_REPLY)
    assert result == {
        "id": "cmpl-3", "object": "text_completion", "created": 1721680408, "model": "m",
        "system_fingerprint": "fp_ollama",
        "choices": [{"text": " upon a time", "index": 0, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}}
    assert Completion.model_validate(result).choices[0].text == " upon a time"


def test_completion_stream_with_usage() -> None:
    stream = CompletionStream(ReplyContext(model="m", id="cmpl-3", created=CREATED,
                                           stream=True, include_usage=True))
    data = stream.chunk(ollama_generate("a")) + stream.chunk(
        ollama_generate("b", done=True, done_reason="length", prompt_eval_count=1,
                        eval_count=2)) + stream.done()
    out = events(data)
    assert out[0] == {"id": "cmpl-3", "object": "text_completion", "created": CREATED,
                      "choices": [{"text": "a", "index": 0, "finish_reason": None}],
                      "model": "m", "system_fingerprint": "fp_ollama",
                      "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
    assert out[1]["choices"][0]["finish_reason"] == "length"
    assert out[2]["choices"] == [] and out[2]["usage"]["total_tokens"] == 3
    assert out[3] == "[DONE]" and len(out) == 4
    # The client types finish_reason as never null, yet OpenAI streams null before the end
    # (the client parses streams leniently; see the end-to-end test): check the rest strictly.
    for event in out[1:3]:
        Completion.model_validate(event)


def test_completion_stream_without_usage_has_no_usage_field() -> None:
    stream = CompletionStream(GEN_REPLY)
    out = events(stream.chunk(ollama_generate("a", done=True, done_reason="stop")))
    assert "usage" not in out[0] and out[1] == "[DONE]"


# --- embeddings and models -----------------------------------------------------------------------

VECTORS = [[0.1, -2.5, 3.25, 1e-8], [0.0, 1.0, -1.0, 65504.0]]


def test_embedding_list_floats() -> None:
    reply = ReplyContext(model="nomic", encoding_format="float")
    result = embedding_list({"model": "nomic:latest", "embeddings": VECTORS,
                             "prompt_eval_count": 7}, reply)
    assert result == {"object": "list", "model": "nomic",
                      "data": [{"object": "embedding", "embedding": VECTORS[0], "index": 0},
                               {"object": "embedding", "embedding": VECTORS[1], "index": 1}],
                      "usage": {"prompt_tokens": 7, "total_tokens": 7}}
    CreateEmbeddingResponse.model_validate(result)


def test_embedding_list_base64_decodes_to_little_endian_float32() -> None:
    reply = ReplyContext(model="nomic", encoding_format="base64")
    result = embedding_list({"embeddings": VECTORS, "prompt_eval_count": 7}, reply)
    for item, vector in zip(result["data"], VECTORS, strict=True):
        raw = base64.b64decode(item["embedding"])
        assert struct.unpack(f"<{len(vector)}f", raw) == tuple(np.float32(vector).tolist())
        assert np.array_equal(np.frombuffer(raw, dtype="<f4"), np.float32(vector))
    # What the client does with a base64 answer when the caller gave no encoding_format.
    parsed = parse_embedding_response(construct_type(type_=CreateEmbeddingResponse,
                                                     value=result), encoding_format=omit)
    assert [d.embedding for d in parsed.data] == [np.float32(v).tolist() for v in VECTORS]


def test_embedding_list_without_embeddings_is_an_empty_list() -> None:
    assert embedding_list({}, ReplyContext(model="e")) == {
        "object": "list", "data": [], "model": "e",
        "usage": {"prompt_tokens": 0, "total_tokens": 0}}


TAGS = {"models": [
    {"name": "llama3:latest", "model": "llama3:latest",
     "modified_at": "2024-05-21T10:26:06.123456789-07:00", "size": 1},
    {"name": "jmorgan/mistral:7b", "modified_at": "2024-05-21T17:26:06Z"},
    {"name": "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M"},
]}


def test_model_list() -> None:
    result = model_list(TAGS)
    assert result == {"object": "list", "data": [
        {"id": "llama3:latest", "object": "model", "created": 1716312366,
         "owned_by": "library"},
        {"id": "jmorgan/mistral:7b", "object": "model", "created": 1716312366,
         "owned_by": "jmorgan"},
        {"id": "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M", "object": "model",
         "created": 0, "owned_by": "bartowski"}]}
    for item in result["data"]:
        Model.model_validate(item)
    assert model_list({"models": []}) == {"object": "list", "data": []}
    assert model_list({}) == {"object": "list", "data": []}


def test_model_object() -> None:
    result = model_object({"modified_at": "2024-05-21T17:26:06Z", "details": {}}, "smollm2")
    assert result == {"id": "smollm2", "object": "model", "created": 1716312366,
                      "owned_by": "library"}
    Model.model_validate(result)


@pytest.mark.parametrize(("name", "owner"), [
    ("llama3", "library"), ("llama3:8b", "library"), ("library/llama3:8b", "library"),
    ("user/model", "user"), ("registry.example.com:5000/team/model:v1", "team"),
    ("host/ns/m", "ns")])
def test_owned_by(name: str, owner: str) -> None:
    assert owned_by(name) == owner


# --- the official client, end to end over an in-memory transport --------------------------------


class FakeGateway:
    """Answers the openai client as the gateway would, from canned Ollama answers."""

    def __init__(self, chat_chunks: list[dict[str, Any]] | None = None) -> None:
        self.chat_chunks = chat_chunks or [ollama_chat("Hello"), ollama_chat(" world"),
                                           ollama_chat(done=True, done_reason="stop",
                                                       prompt_eval_count=4, eval_count=2)]
        self.ollama_bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if request.method == "GET":
            return self._models(path)
        handler = {"/v1/chat/completions": self._chat, "/v1/completions": self._generate,
                   "/v1/embeddings": self._embed}[path]
        try:
            return handler(request.content)
        except BadRequest as exc:
            return httpx2.Response(400, json=error_object(400, exc.message))

    def _chat(self, body: bytes) -> httpx2.Response:
        call = chat_request(body, created=CREATED, serial=1)
        self.ollama_bodies.append(msgspec.json.decode(call.body))
        if not call.reply.stream:
            final = {**self.chat_chunks[-1], "message": {
                "role": "assistant", "content": "".join(
                    c["message"]["content"] for c in self.chat_chunks)}}
            return httpx2.Response(200, json=chat_completion(final, call.reply))
        stream = ChatStream(call.reply)
        data = b"".join(stream.chunk(chunk) for chunk in self.chat_chunks) + stream.done()
        return httpx2.Response(200, content=data,
                               headers={"content-type": "text/event-stream"})

    def _generate(self, body: bytes) -> httpx2.Response:
        call = completion_request(body, created=CREATED, serial=2)
        self.ollama_bodies.append(msgspec.json.decode(call.body))
        if not call.reply.stream:
            answer = ollama_generate("done", done=True, done_reason="stop", eval_count=1)
            return httpx2.Response(200, json=text_completion(answer, call.reply))
        stream = CompletionStream(call.reply)
        chunks = [ollama_generate("Hel"), ollama_generate("lo"),
                  ollama_generate(done=True, done_reason="stop", eval_count=2)]
        data = b"".join(stream.chunk(chunk) for chunk in chunks) + stream.done()
        return httpx2.Response(200, content=data,
                               headers={"content-type": "text/event-stream"})

    def _embed(self, body: bytes) -> httpx2.Response:
        call = embedding_request(body)
        self.ollama_bodies.append(msgspec.json.decode(call.body))
        answer = {"embeddings": VECTORS, "prompt_eval_count": 3}
        return httpx2.Response(200, json=embedding_list(answer, call.reply))

    def _models(self, path: str) -> httpx2.Response:
        if path == "/v1/models":
            return httpx2.Response(200, json=model_list(TAGS))
        name = path.removeprefix("/v1/models/")
        return httpx2.Response(200, json=model_object({"modified_at": None}, name))


def client_for(gateway: FakeGateway) -> openai.OpenAI:
    http = httpx2.Client(transport=httpx2.MockTransport(gateway))
    return openai.OpenAI(api_key="unused", base_url="http://gateway/v1", http_client=http,
                         max_retries=0)


def test_official_client_chat_non_streaming() -> None:
    gateway = FakeGateway()
    answer = client_for(gateway).chat.completions.create(
        model="llama3", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert answer.choices[0].message.content == "Hello world"
    assert answer.choices[0].finish_reason == "stop" and answer.usage is not None
    assert answer.usage.total_tokens == 6 and answer.id == "chatcmpl-1"
    assert gateway.ollama_bodies[0]["options"]["num_predict"] == 5


def test_official_client_chat_streaming_with_usage() -> None:
    stream = client_for(FakeGateway()).chat.completions.create(
        model="llama3", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Hello world"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 4


def test_official_client_sees_a_mid_stream_failure() -> None:
    gateway = FakeGateway([ollama_chat("Hel"), {"error": "out of memory"}])
    stream = client_for(gateway).chat.completions.create(
        model="llama3", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.APIError, match="out of memory"):
        list(stream)


def test_official_client_gets_bad_request_errors() -> None:
    with pytest.raises(openai.BadRequestError, match="image URLs are not currently supported"):
        client_for(FakeGateway()).chat.completions.create(model="llama3", messages=[{
            "role": "user", "content": [{"type": "image_url",
                                         "image_url": {"url": "https://x.test/a.png"}}]}])


def test_official_client_tool_round_trip() -> None:
    gateway = FakeGateway()
    client_for(gateway).chat.completions.create(model="llama3", messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [{"id": "call_9", "type": "function", "function": {
            "name": "weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "hot"}],
        tools=[{"type": "function", "function": {"name": "weather", "parameters": {}}}])
    sent = gateway.ollama_bodies[0]
    assert sent["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Rome"}
    assert sent["messages"][2]["tool_name"] == "weather"


def test_official_client_completions() -> None:
    gateway = FakeGateway()
    answer = client_for(gateway).completions.create(model="m", prompt="Say", max_tokens=3)
    assert answer.choices[0].text == "done" and answer.object == "text_completion"
    assert gateway.ollama_bodies[0]["options"]["num_predict"] == 3


def test_official_client_completions_streaming() -> None:
    gateway = FakeGateway()
    chunks = list(client_for(gateway).completions.create(
        model="m", prompt="Say", stream=True, stream_options={"include_usage": True}))
    assert [c.choices[0].text for c in chunks if c.choices] == ["Hel", "lo", ""]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


def test_official_client_embeddings_default_base64_decodes_to_the_floats() -> None:
    gateway = FakeGateway()
    answer = client_for(gateway).embeddings.create(model="nomic", input=["a", "b"])
    assert [d.embedding for d in answer.data] == [np.float32(v).tolist() for v in VECTORS]
    assert answer.usage.prompt_tokens == 3
    assert gateway.ollama_bodies[0] == {"model": "nomic", "input": ["a", "b"]}


def test_official_client_models() -> None:
    client = client_for(FakeGateway())
    assert [m.owned_by for m in client.models.list()] == ["library", "jmorgan", "bartowski"]
    model = client.models.retrieve("jmorgan/mistral:7b")
    assert model.id == "jmorgan/mistral:7b" and model.owned_by == "jmorgan"


# --- properties ------------------------------------------------------------------------------

_text = st.text(max_size=40)
_content = st.one_of(_text, st.lists(st.builds(lambda t: {"type": "text", "text": t}, _text),
                                     max_size=4))
_message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                  "content": _content})


@settings(max_examples=200, deadline=None)
@given(st.lists(_message, min_size=1, max_size=6))
def test_message_text_round_trips_into_the_ollama_body(messages: list[dict[str, Any]]) -> None:
    sent = chat({"model": "m", "messages": messages})["messages"]
    expected = [(m["role"], part["text"]) for m in messages for part in (
        [{"text": m["content"]}] if isinstance(m["content"], str) else m["content"])]
    assert [(m["role"], m["content"]) for m in sent] == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False), max_size=64))
def test_base64_embeddings_hold_exactly_the_float32_values(vector: list[float]) -> None:
    result = embedding_list({"embeddings": [vector]},
                            ReplyContext(model="e", encoding_format="base64"))
    raw = base64.b64decode(result["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(vector)}f", raw)) == vector


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=10), max_size=8), st.booleans())
def test_streamed_deltas_concatenate_to_the_answer(pieces: list[str], usage: bool) -> None:
    chunks = [ollama_chat(piece) for piece in pieces]
    chunks.append(ollama_chat(done=True, done_reason="stop", eval_count=len(pieces)))
    out = stream_chat(chunks, include_usage=usage)
    assert out[-1] == "[DONE]"
    parsed = [ChatCompletionChunk.model_validate(e) for e in out[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in parsed if c.choices) == \
        "".join(pieces)
    assert (parsed[-1].usage is not None) == usage
