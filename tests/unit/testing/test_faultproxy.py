"""The fault proxy against a real echo server on 127.0.0.1: each toxic does what toxiproxy's
does, toxics change at run time, and the control API speaks toxiproxy's JSON."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import pytest
from aiohttp import web

from ollamamax.errors import ConfigError
from ollamamax.testing.faultproxy import FaultProxy, Toxic, api_app


@pytest.fixture
async def echo():
    """An echo server: every byte comes back; it closes when the client does."""
    handlers: set[asyncio.Task] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)


@pytest.fixture
async def proxy(echo):
    async with FaultProxy(echo, rng=random.Random(1)) as p:
        yield p


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*proxy.listen)


async def roundtrip(proxy: FaultProxy, data: bytes, timeout: float = 5.0) -> bytes:
    reader, writer = await connect(proxy)
    try:
        writer.write(data)
        await writer.drain()
        got = b""
        async with asyncio.timeout(timeout):
            while len(got) < len(data):
                piece = await reader.read(65536)
                if not piece:
                    break
                got += piece
        return got
    finally:
        writer.close()


async def test_without_toxics_bytes_pass_unchanged(proxy):
    assert await roundtrip(proxy, b"hello " * 1000) == b"hello " * 1000
    assert proxy.stats.connections == 1


async def test_latency_holds_every_chunk_but_keeps_throughput(proxy):
    proxy.add(Toxic("latency", "downstream", {"latency": 100}))
    reader, writer = await connect(proxy)
    started = time.monotonic()
    for i in range(10):  # ten chunks sent 10 ms apart: pipelined, not 10 x 100 ms
        writer.write(b"%d" % i)
        await writer.drain()
        await asyncio.sleep(0.01)
    got = b""
    async with asyncio.timeout(5):
        while len(got) < 10:
            got += await reader.read(100)
    elapsed = time.monotonic() - started
    writer.close()
    assert got == b"0123456789"
    assert elapsed >= 0.1
    assert elapsed < 0.9  # held once each (~0.2 s), not one after the other (1 s)


async def test_limit_data_cuts_the_connection_after_n_bytes(proxy):
    proxy.add(Toxic("limit_data", "downstream", {"bytes": 10}))
    reader, writer = await connect(proxy)
    writer.write(b"x" * 100)
    got = b""
    async with asyncio.timeout(5):
        while piece := await reader.read(1000):
            got += piece
    writer.close()
    assert got == b"x" * 10


async def test_reset_peer_resets_the_client(proxy):
    proxy.add(Toxic("reset_peer", "upstream", {"timeout": 0}))
    reader, writer = await connect(proxy)
    writer.write(b"hello")
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(5):
            while await reader.read(100):
                pass
            raise AssertionError("closed without a reset")
    writer.close()
    assert proxy.stats.resets == 1


async def test_reset_peer_with_a_timeout_resets_a_running_connection(proxy):
    reader, writer = await connect(proxy)
    writer.write(b"a")
    assert await reader.read(10) == b"a"
    proxy.add(Toxic("reset_peer", "downstream", {"timeout": 50}))  # applies to it from now
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(5):
            while await reader.read(100):
                pass
            raise AssertionError("closed without a reset")
    writer.close()


async def test_timeout_zero_is_a_blackhole_until_removed(proxy):
    proxy.add(Toxic("timeout", "downstream", {"timeout": 0}))
    reader, writer = await connect(proxy)
    writer.write(b"lost")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await reader.read(10)
    proxy.remove("timeout_downstream")
    writer.write(b"back")
    async with asyncio.timeout(5):
        assert await reader.read(10) == b"back"
    writer.close()


async def test_timeout_closes_the_connection_after_its_time(proxy):
    proxy.add(Toxic("timeout", "upstream", {"timeout": 100}))
    reader, writer = await connect(proxy)
    writer.write(b"dropped")
    async with asyncio.timeout(5):
        assert await reader.read(10) == b""  # closed, nothing came through
    writer.close()


async def test_slicer_delivers_everything_in_small_pieces(proxy):
    proxy.add(Toxic("slicer", "downstream", {"average_size": 10, "size_variation": 5,
                                             "delay": 100}))
    data = bytes(range(256)) * 4
    assert await roundtrip(proxy, data) == data


async def test_bandwidth_limits_the_rate(proxy):
    proxy.add(Toxic("bandwidth", "downstream", {"rate": 100}))  # KB/s
    started = time.monotonic()
    assert await roundtrip(proxy, b"z" * 20480) == b"z" * 20480
    assert time.monotonic() - started >= 0.19  # 20 KB at 100 KB/s


async def test_slow_close_passes_the_end_on_late(proxy):
    proxy.add(Toxic("slow_close", "downstream", {"delay": 200}))
    reader, writer = await connect(proxy)
    writer.write(b"bye")
    assert await reader.read(10) == b"bye"
    writer.write_eof()  # the echo server closes; its end reaches us 200 ms late
    started = time.monotonic()
    async with asyncio.timeout(5):
        assert await reader.read(10) == b""
    assert time.monotonic() - started >= 0.15
    writer.close()


async def test_toxicity_zero_never_applies(proxy):
    proxy.add(Toxic("reset_peer", "upstream", {"timeout": 0}, toxicity=0.0))
    assert await roundtrip(proxy, b"safe") == b"safe"


async def test_toxicity_is_drawn_once_per_connection(proxy):
    proxy.add(Toxic("reset_peer", "upstream", {"timeout": 0}, toxicity=0.5))
    outcomes = []
    for _ in range(20):
        try:
            outcomes.append(await roundtrip(proxy, b"?") == b"?")
        except ConnectionResetError:
            outcomes.append(False)
    assert 0 < sum(outcomes) < 20


async def test_disable_refuses_and_enable_listens_again_on_the_same_port(proxy):
    port = proxy.port
    await proxy.disable()
    with pytest.raises(OSError):
        await connect(proxy)
    await proxy.enable()
    assert proxy.port == port
    assert await roundtrip(proxy, b"up") == b"up"


async def test_an_unreachable_upstream_is_a_reset():
    async with FaultProxy("127.0.0.1:1") as p:
        reader, writer = await connect(p)
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(5):
                while await reader.read(10):
                    pass
                raise AssertionError("closed without a reset")
        writer.close()
        assert p.stats.refused == 1


@pytest.mark.parametrize(("spec", "expected"), [
    ("latency@downstream:latency=200,jitter=50",
     Toxic("latency", "downstream", {"latency": 200, "jitter": 50})),
    ("reset_peer@upstream:timeout=0,toxicity=0.5,name=r",
     Toxic("reset_peer", "upstream", {"timeout": 0}, 0.5, "r")),
    ("limit_data:bytes=100", Toxic("limit_data", "downstream", {"bytes": 100})),
])
def test_parse_toxic_specs(spec, expected):
    assert Toxic.parse(spec) == expected


@pytest.mark.parametrize("spec", ["nosuch", "latency@sideways", "latency:wait=1",
                                  "latency:latency=fast", "latency:toxicity=2", "latency:oops"])
def test_bad_toxic_specs_are_refused_with_a_reason(spec):
    with pytest.raises(ConfigError):
        Toxic.parse(spec)


async def test_control_api_changes_toxics_at_run_time(proxy):
    runner = web.AppRunner(api_app(proxy))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(api + "/toxics", json={
                    "type": "limit_data", "stream": "downstream", "attributes": {"bytes": 3}}) as r:
                assert r.status == 200
                assert (await r.json())["name"] == "limit_data_downstream"
            assert await roundtrip(proxy, b"abcdef") == b"abc"
            async with http.get(api + "/toxics") as r:
                assert [t["type"] for t in await r.json()] == ["limit_data"]
            async with http.delete(api + "/toxics/limit_data_downstream") as r:
                assert r.status == 200
            assert await roundtrip(proxy, b"abcdef") == b"abcdef"
            async with http.post(api + "/toxics", json={"type": "bogus"}) as r:
                assert r.status == 400
            async with http.delete(api + "/toxics/none") as r:
                assert r.status == 404
            async with http.post(api + "/proxy", json={"enabled": False}) as r:
                assert (await r.json())["enabled"] is False
    finally:
        await runner.cleanup()
