"""The etcd store's failover rules and watch resumption, against scripted fakes of etcd's JSON
gateway: the cases a real etcd cannot be made to produce on cue."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from ollamamax.cluster.etcd import EtcdStore, prefix_range
from ollamamax.cluster.store import EventType
from ollamamax.errors import ConfigError, StoreUnavailable

Reply = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class FakeMember:
    """One endpoint: answers each path with a scripted reply, recording every request."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.replies: dict[str, Reply] = {}
        self.streams: list[Reply] = []  # successive /v3/watch answers
        self.done = asyncio.Event()

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, body))
        if request.path == "/v3/watch":
            return await self.streams.pop(0)(request, body)
        return await self.replies[request.path](request, body)


async def no_leader(request: web.Request, body: dict[str, Any]) -> web.Response:
    message = "etcdserver: no leader"
    return web.json_response({"error": message, "message": message, "code": 14}, status=503)


async def hang_up(request: web.Request, body: dict[str, Any]) -> web.Response:
    assert request.transport is not None
    request.transport.close()  # as a member that dies with the request in hand
    await asyncio.sleep(0.01)
    return web.Response()


async def one_key(request: web.Request, body: dict[str, Any]) -> web.Response:
    kv = {"key": b64("k"), "create_revision": "3", "mod_revision": "4", "version": "2"}
    return web.json_response({"header": {"revision": "9"}, "kvs": [kv], "count": "1"})


async def put_done(request: web.Request, body: dict[str, Any]) -> web.Response:
    return web.json_response({"header": {"revision": "10"}})


@pytest.fixture
async def members():
    runners, fakes = [], []
    for _ in range(2):
        fake = FakeMember()
        app = web.Application()
        app.router.add_post("/{path:.*}", fake.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        runners.append(runner)
        fakes.append(fake)
    yield fakes
    for fake in fakes:
        fake.done.set()
    for runner in runners:
        await runner.cleanup()


async def test_a_read_moves_on_from_a_member_without_leader(members) -> None:
    a, b = members
    a.replies["/v3/kv/range"] = no_leader
    b.replies["/v3/kv/range"] = one_key
    async with EtcdStore([a.url, b.url]) as store:
        got = await store.get("k")
        assert (got.value, got.mod_revision, got.version, got.lease) == (b"", 4, 2, 0)
        assert store.endpoint == b.url
        await store.get("k")  # straight to the member that answered
    assert (a.count("/v3/kv/range"), b.count("/v3/kv/range")) == (1, 2)


async def test_a_read_whose_connection_broke_is_repeated_elsewhere(members) -> None:
    a, b = members
    a.replies["/v3/kv/range"] = hang_up
    b.replies["/v3/kv/range"] = one_key
    async with EtcdStore([a.url, b.url]) as store:
        assert await store.get("k") is not None


@pytest.mark.parametrize("failure", [hang_up, no_leader])
async def test_a_write_is_never_sent_twice(members, failure) -> None:
    a, b = members
    a.replies["/v3/kv/put"] = failure
    b.replies["/v3/kv/put"] = put_done
    async with EtcdStore([a.url, b.url]) as store:
        with pytest.raises(StoreUnavailable):
            await store.put("k", b"v")
    assert b.count("/v3/kv/put") == 0


def watch_line(**result: Any) -> bytes:
    return json.dumps({"result": {"header": {"revision": "4"}, **result}}).encode() + b"\n"


def put_event(key: str, value: bytes, revision: int) -> dict[str, Any]:
    return {"kv": {"key": b64(key), "value": b64(value), "mod_revision": str(revision)}}


async def test_a_watch_resumes_after_the_last_revision_it_delivered(members) -> None:
    a, _ = members
    big = b"x" * 300_000  # one line longer than aiohttp's readline limit

    async def first(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(watch_line(created=True))
        await response.write(watch_line(events=[  # one transaction: two keys, one revision
            put_event("w/a", b"1", 5), put_event("w/b", b"2", 5)]))
        await response.write(watch_line(events=[{"type": "DELETE", "kv": {
            "key": b64("w/a"), "mod_revision": "6"}}]))
        await response.write(json.dumps({"error": {"grpc_code": 14, "message": "no leader"}})
                             .encode() + b"\n")
        return response

    async def second(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(watch_line(created=True))
        line = watch_line(events=[put_event("w/a", b"1", 5),  # resent by mistake: dropped
                                  put_event("w/c", big, 7)])
        for i in range(0, len(line), 65_536):  # arrives in pieces
            await response.write(line[i:i + 65_536])
        await a.done.wait()
        return response

    a.streams += [first, second]
    async with EtcdStore([a.url]) as store, \
            contextlib.aclosing(store.watch_prefix("w/", 5)) as events:
        got = [await anext(events) for _ in range(4)]
    assert [(e.type, e.key, e.mod_revision) for e in got] == [
        (EventType.PUT, "w/a", 5), (EventType.PUT, "w/b", 5), (EventType.DELETE, "w/a", 6),
        (EventType.PUT, "w/c", 7)]
    assert got[3].value == big
    starts = [body["create_request"]["start_revision"] for path, body in a.requests]
    assert starts == [5, 7]


@pytest.mark.parametrize(("prefix", "key", "end"), [
    ("", b"\0", b"\0"),  # every key
    ("nodes/", b"nodes/", b"nodes0"),
    ("a\xff", b"a\xc3\xbf", b"a\xc3\xc0"),  # UTF-8 bytes, incremented as bytes
    ("\udcff", b"\xff", b"\0"),  # a raw 0xff byte (surrogate-escaped): no upper bound
])
def test_prefix_ranges(prefix: str, key: bytes, end: bytes) -> None:
    assert prefix_range(prefix) == {"key": key, "range_end": end}


def test_endpoints_must_be_urls() -> None:
    with pytest.raises(ConfigError, match="http:// or https://"):
        EtcdStore("127.0.0.1:2379")
    with pytest.raises(ConfigError, match="needs its certificate"):
        EtcdStore("https://127.0.0.1:2379", key_file="client.key")


def test_a_watch_stream_ended_by_etcd_shutting_down_is_resumable_not_fatal():
    from ollamamax.cluster.etcd import _watch_result
    from ollamamax.cluster.etcd_http import EtcdError
    from ollamamax.errors import StoreUnavailable

    closing = (b'{"error":{"grpc_code":1,"http_code":408,"message":"grpc: the client connection '
               b'is closing","http_status":"Request Timeout"}}')
    with pytest.raises(StoreUnavailable, match="closing"):
        _watch_result(closing)
    with pytest.raises(EtcdError):  # a real refusal still ends the watch
        _watch_result(b'{"error":{"grpc_code":3,"message":"invalid watch request"}}')
