"""The gateway's resilience over real sockets, against scripted nodes in this process: what is
and is not blamed on a node, ejection, the retry budget, timeouts, hedging, drain, and the
requests a node found down gives back before their first byte.

(Real node processes killed, paused and slowed are in tests/acceptance/test_resilience.py.)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ollamamax import config
from ollamamax.gateway.app import Gateway
from ollamamax.gateway.drain import drain

MODEL = "m:1b"


class FakeNode:
    """Answers like an OllamaMax node, misbehaving as `mode` says."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"  # ok | 500 | 503 | draining | hang | slow
        self.delay = 0.0  # seconds before answering, in "slow" mode
        self.chunks = 3
        self.slots = 64
        self.chunk_delay = 0.0
        self.hits = 0
        self.hit = asyncio.Event()  # set by every request
        self.cancelled = 0  # answers whose client left before the end
        self.telemetry_hangs = False
        self.release = asyncio.Event()  # ends every hang at teardown

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/telemetry", self.telemetry)
        app.router.add_post("/api/generate", self.generate)
        return app

    async def telemetry(self, request: web.Request) -> web.Response:
        if self.telemetry_hangs:
            await self.release.wait()
        return web.json_response({
            "engine": "fake", "models": [{"name": MODEL, "size": 1}],
            "loaded": [{"name": MODEL, "slots": self.slots, "busy": 0}], "queue_depth": 0,
            "num_parallel": self.slots, "draining": False})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.hit.set()
        body = await request.json()
        if self.mode == "500":
            return web.json_response({"error": "boom"}, status=500)
        if self.mode == "503":
            return web.json_response({"error": "server busy, please try again.  maximum "
                                               "pending requests exceeded"}, status=503)
        if self.mode == "draining":
            return web.json_response(
                {"error": f"node {self.name} is draining: it takes no new requests"}, status=503)
        try:
            if self.mode == "hang":
                await self.release.wait()
            if self.mode == "slow":
                await asyncio.sleep(self.delay)
            if not body.get("stream", True):
                return web.json_response(_chunk(self.name, True))
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await response.prepare(request)
            for i in range(self.chunks):
                await response.write(msgspec.json.encode(_chunk(self.name, False, i)) + b"\n")
                await asyncio.sleep(self.chunk_delay)
            await response.write(msgspec.json.encode(_chunk(self.name, True)) + b"\n")
            await response.write_eof()
            return response
        except (asyncio.CancelledError, ConnectionError):
            self.cancelled += 1
            raise


def _chunk(node: str, done: bool, i: int = 0) -> dict[str, Any]:
    return {"model": MODEL, "response": "" if done else f"{node}-{i} ", "done": done,
            **({"done_reason": "stop", "eval_count": 3} if done else {})}


class Rig:
    """A gateway (in this process, real sockets) over fake nodes."""

    def __init__(self, nodes: dict[str, FakeNode], gateway: Gateway, client: TestClient):
        self.nodes = nodes
        self.gateway = gateway
        self.client = client

    async def generate(self, stream: bool = False, **extra: Any) -> tuple[int, list[Any]]:
        async with self.client.post("/api/generate", json={
                "model": MODEL, "prompt": "hi", "stream": stream, **extra}) as r:
            lines = [msgspec.json.decode(line) for line in (await r.read()).splitlines()
                     if line.strip()]
            return r.status, lines

    async def node_rows(self) -> dict[str, dict[str, Any]]:
        async with self.client.get("/admin/nodes") as r:
            return {n["id"]: n for n in (await r.json())["nodes"]}

    async def metric(self, name: str, **labels: str) -> float:
        async with self.client.get("/metrics") as r:
            text = await r.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture
async def rig_factory():
    made: list[tuple[list[TestServer], TestClient, list[FakeNode]]] = []

    async def make(names: tuple[str, ...] = ("a", "b"), slots: int = 64, **overrides: Any
                   ) -> Rig:
        nodes = {name: FakeNode(name) for name in names}
        for node in nodes.values():
            node.slots = slots
        servers = [TestServer(node.app()) for node in nodes.values()]
        for server in servers:
            await server.start_server()
        backends = tuple(f"{name}=http://127.0.0.1:{server.port}"
                         for name, server in zip(nodes, servers, strict=True))
        conf = config.load(env={}, overrides={"gateway.backends": backends,
                                              "scheduler.strategy": "round_robin", **overrides})
        gateway = Gateway(conf)
        client = TestClient(TestServer(gateway.app()))
        await client.start_server()
        made.append((servers, client, list(nodes.values())))
        return Rig(nodes, gateway, client)

    yield make
    for servers, client, nodes in made:
        for node in nodes:
            node.release.set()
        await client.close()
        for server in servers:
            await server.close()


async def test_a_failing_node_is_ejected_after_five_failures_and_clients_never_see_them(
        rig_factory):
    rig = await rig_factory()
    rig.nodes["a"].mode = "500"
    statuses = [(await rig.generate())[0] for _ in range(30)]
    assert statuses == [200] * 30  # every failure before the first byte went to b
    assert rig.nodes["a"].hits == 5  # then a was out of routing
    rows = await rig.node_rows()
    assert rows["a"]["ejected"] and rows["a"]["breaker"] == "open"
    assert await rig.metric("ollamamax_gateway_ejections_total", node="a") == 1
    assert await rig.metric("ollamamax_gateway_retries_total", reason="status") == 5


async def test_a_node_answering_503_is_overloaded_not_failing(rig_factory):
    rig = await rig_factory()
    rig.nodes["a"].mode = "503"
    statuses = [(await rig.generate())[0] for _ in range(16)]
    assert statuses == [200] * 16  # each went on to b
    assert rig.nodes["a"].hits == 8  # still tried: full now is not broken
    rows = await rig.node_rows()
    assert not rows["a"]["ejected"] and rows["a"]["breaker"] == "closed"
    assert await rig.metric("ollamamax_gateway_retries_total", reason="overloaded") == 8
    assert await rig.metric("ollamamax_gateway_ejections_total") == 0


async def test_the_gateways_own_overload_never_counts_against_a_node(rig_factory):
    rig = await rig_factory(("a",), slots=1, **{"scheduler.max_waiting": 1,
                                                 "scheduler.strategy": "intelligent"})
    node = rig.nodes["a"]
    node.mode, node.delay = "slow", 0.3  # one slot: one runs, one waits, the rest are refused
    results = await asyncio.gather(*(rig.generate() for _ in range(12)))
    refused = [status for status, _ in results if status in (429, 503)]
    assert refused, results  # admission control refused some
    assert (await rig.node_rows())["a"]["breaker"] == "closed"
    assert rig.gateway.resilience.outliers.failures[0] == 0


async def test_a_draining_node_is_taken_out_of_routing_at_its_first_503(rig_factory):
    rig = await rig_factory(**{"gateway.health_interval": 30.0})
    rig.nodes["a"].mode = "draining"  # since the last health check
    statuses = [(await rig.generate())[0] for _ in range(10)]
    assert statuses == [200] * 10
    assert rig.nodes["a"].hits == 1
    rows = await rig.node_rows()
    assert rows["a"]["draining"] and not rows["a"]["ejected"]


async def test_retries_stop_when_the_budget_is_spent(rig_factory):
    rig = await rig_factory(**{"resilience.retry_budget": 0.0, "resilience.retry_budget_min": 1,
                               "resilience.retry_budget_window": 600.0})
    rig.nodes["a"].mode = "503"
    statuses = [(await rig.generate())[0] for _ in range(4)]  # a, b, a, b
    assert statuses == [200, 200, 503, 200]  # the second failure on a could not retry
    assert await rig.metric("ollamamax_gateway_retry_budget_exceeded_total") == 1
    assert await rig.metric("ollamamax_gateway_retries_total") == 1


async def test_a_hanging_node_declared_down_gives_its_waiting_requests_back(rig_factory):
    rig = await rig_factory(**{"gateway.health_interval": 0.2, "gateway.health_timeout": 0.2,
                               "gateway.ttft_timeout": 60.0})
    a = rig.nodes["a"]
    a.mode, a.telemetry_hangs = "hang", True  # like a paused process: accepts, never answers
    started = time.monotonic()
    status, lines = await rig.generate(stream=True)  # round robin: a first
    assert status == 200 and lines[-1]["done"] and lines[0]["response"].startswith("b-")
    assert time.monotonic() - started < 30  # far below the TTFT timeout of 60 s
    assert a.hits == 1
    assert not (await rig.node_rows())["a"]["healthy"]


async def test_a_stream_past_the_total_timeout_ends_with_an_error_chunk(rig_factory):
    rig = await rig_factory(("a",), **{"gateway.total_timeout": 0.5})
    node = rig.nodes["a"]
    node.chunks, node.chunk_delay = 100, 0.05  # a 5 s answer
    status, lines = await rig.generate(stream=True)
    assert status == 200
    assert "total timeout" in lines[-1]["error"]
    assert 1 <= len(lines) < 100
    assert rig.gateway.resilience.outliers.failures[0] == 0  # not the node's fault


async def test_a_hedge_answers_a_slow_non_streamed_request_from_the_next_node(rig_factory):
    rig = await rig_factory(**{"resilience.hedge": True, "resilience.hedge_min_delay": 0.05})
    for _ in range(10):  # answer times to hedge by
        assert (await rig.generate())[0] == 200
    a = rig.nodes["a"]
    a.mode, a.delay = "slow", 20.0
    started = time.monotonic()
    status, [answer] = await rig.generate()  # round robin: a first, hedged to b
    assert status == 200 and answer["done"]
    assert time.monotonic() - started < 10  # a alone would have taken 20 s
    assert await rig.metric("ollamamax_gateway_retries_total", reason="hedge") == 1
    for _ in range(100):  # the losing copy was cancelled: a saw its client leave
        if a.cancelled:
            break
        await asyncio.sleep(0.02)
    assert a.cancelled == 1
    assert int(rig.gateway.view.in_flight[0]) == 0 and int(rig.gateway.view.in_flight[1]) == 0


async def test_no_hedging_by_default(rig_factory):
    rig = await rig_factory()
    for _ in range(10):
        await rig.generate()
    a = rig.nodes["a"]
    a.mode, a.delay = "slow", 0.5
    assert (await rig.generate())[0] == 200
    assert await rig.metric("ollamamax_gateway_retries_total", reason="hedge") == 0
    assert a.cancelled == 0


async def test_gateway_drain_lets_a_stream_finish(rig_factory):
    rig = await rig_factory(("a",))
    node = rig.nodes["a"]
    node.chunks, node.chunk_delay = 10, 0.05
    task = asyncio.ensure_future(rig.generate(stream=True))
    await node.hit.wait()
    sentence = await drain(rig.gateway.path, rig.gateway.upstream, timeout=10.0)
    assert sentence.startswith("drained: 1 requests in flight finished")
    status, lines = await task
    assert status == 200 and lines[-1]["done"]


async def test_gateway_drain_deadline_ends_streams_with_an_error_chunk(rig_factory):
    rig = await rig_factory(("a",))
    node = rig.nodes["a"]
    node.chunks, node.chunk_delay = 200, 0.05  # 10 s
    task = asyncio.ensure_future(rig.generate(stream=True))
    await node.hit.wait()
    await asyncio.sleep(0.1)
    sentence = await drain(rig.gateway.path, rig.gateway.upstream, timeout=0.3)
    assert "1 requests were still in flight and were ended with an error" in sentence
    status, lines = await task
    assert status == 200 and "shutting down" in lines[-1]["error"]
    assert rig.gateway.resilience.outliers.failures[0] == 0  # not the node's fault
