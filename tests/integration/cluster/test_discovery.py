"""LAN discovery on loopback, with real processes: a gateway started with no backend finds a
node that advertises ``_ollamamax._tcp`` (here a per-test service type, so concurrent runs
do not see each other's nodes) and a stock Ollama advertised as ``_ollama._tcp``, health-
checks them and routes to them, and marks them down when they stop."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from ollamamax.cluster.discovery import Advertiser, DiscoveredBackends, LanDiscovery
from ollamamax.scheduler.view import ClusterView
from ollamamax.supervisor import Supervisor

pytestmark = pytest.mark.slow

LOOPBACK = "127.0.0.1"


async def _mdns_on_loopback() -> bool:
    service = f"_omprobe{uuid.uuid4().hex[:6]}._tcp"
    view = ClusterView()
    browser = LanDiscovery(DiscoveredBackends(view), [service], interfaces=[LOOPBACK])
    ad = Advertiser("probe", "http://127.0.0.1:9", "none", service=service,
                    interfaces=[LOOPBACK])
    await browser.start()
    await ad.start()
    try:
        for _ in range(60):
            if "probe" in view.index:
                return True
            await asyncio.sleep(0.05)
        return False
    finally:
        await ad.stop()
        await browser.stop()


@pytest.fixture(scope="module")
def mdns() -> None:
    try:
        works = asyncio.run(_mdns_on_loopback())
    except OSError as exc:
        pytest.skip(f"multicast DNS cannot run here: {exc}")
    if not works:
        pytest.skip("multicast DNS on 127.0.0.1 finds nothing here (no multicast on "
                    "loopback); LAN discovery is left untested")


def admin_nodes(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/admin/nodes", timeout=5) as reply:
        return {n["id"]: n for n in json.loads(reply.read())["nodes"]}


def wait_for(check, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")


class StockOllama:
    """A stand-in for a stock Ollama with no node agent: /api/tags and /api/ps only, and
    an ``_ollama._tcp`` advertisement, in a thread with its own loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported by __enter__
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        async def models(request: web.Request) -> web.Response:
            return web.json_response(
                {"models": [{"name": "stock:7b", "model": "stock:7b", "size": 7}]})

        app = web.Application()
        app.router.add_get("/api/tags", models)
        app.router.add_get("/api/ps", models)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, LOOPBACK, 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://{LOOPBACK}:{port}"
        # a stock server says nothing about itself: no TXT properties, found by address
        info = AsyncServiceInfo("_ollama._tcp.local.", f"{self.name}._ollama._tcp.local.",
                                port=port, addresses=[socket.inet_aton(LOOPBACK)],
                                server=f"{self.name}.local.")
        zc = AsyncZeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
        await zc.async_register_service(info)
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await zc.async_unregister_service(info)
        await zc.async_close()
        await runner.cleanup()

    def __enter__(self) -> StockOllama:
        self._thread.start()
        assert self._ready.wait(10), "the stock Ollama stand-in did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def lan(tmp_path, mdns) -> Iterator[tuple[Supervisor, dict[str, str]]]:
    env = {"OLLAMAMAX_CLUSTER_DISCOVERY": "true",
           "OLLAMAMAX_CLUSTER_DISCOVERY_SERVICE": f"_omtest{uuid.uuid4().hex[:8]}._tcp",
           "OLLAMAMAX_CLUSTER_DISCOVERY_INTERFACES": LOOPBACK}
    with Supervisor(tmp_path / "logs") as supervisor:
        yield supervisor, env


def test_a_gateway_finds_advertised_nodes_and_stock_ollama_servers(lan, tmp_path) -> None:
    supervisor, env = lan
    node_id = f"lan-{uuid.uuid4().hex[:6]}"
    node = supervisor.start(node_id, ["node", "--listen", "127.0.0.1:0", "--id", node_id,
                                      "--engine", "sim", "--sim-profile", "instant",
                                      "--sim-model", "m:1b=1000",
                                      "--models-dir", str(tmp_path / "n")], env)
    gateway = supervisor.start("gw", ["gateway", "--listen", "127.0.0.1:0"], env)
    supervisor.wait_ready(node)
    gw = supervisor.wait_ready(gateway)
    stock_id = f"stock-{uuid.uuid4().hex[:6]}"
    with StockOllama(stock_id) as stock:
        nodes = wait_for(lambda: (n := admin_nodes(gw)).get(node_id, {}).get("healthy")
                         and n.get(stock_id, {}).get("healthy") and n, 10.0,
                         "both discovered and healthy")
        assert nodes[node_id]["url"] == node.url and nodes[node_id]["engine"] == "sim"
        assert nodes[stock_id]["url"] == stock.url
        assert nodes[stock_id]["engine"] == "ollama (no agent)"  # /api/tags and /api/ps polled
        assert nodes[stock_id]["loaded"] == ["stock:7b"]
        body = json.dumps({"model": "m:1b", "prompt": "hi", "stream": False,
                           "options": {"num_predict": 2}}).encode()
        with urllib.request.urlopen(urllib.request.Request(gw + "/api/generate", body),
                                    timeout=10) as reply:
            assert json.loads(reply.read())["done"]
    # Stopped, they send mDNS goodbyes, which zeroconf applies at its next cache cleanup
    # (up to ~10 s later: too slow to wait for here; DiscoveredBackends.removed is unit-
    # tested); the health checks take them out of routing first.
    supervisor.stop(node)
    wait_for(lambda: not any(n["healthy"] for n in admin_nodes(gw).values()), 5.0,
             "the stopped servers marked down")
    assert "unexpected error" not in gateway.log.read_text()
