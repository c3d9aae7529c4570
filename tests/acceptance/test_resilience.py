"""Real processes failing the ways machines do: nodes killed -9, paused with SIGSTOP, slowed
or cut by the fault proxy, drained, 1,000 streams at once, and a gateway stopped mid-stream.

The promises are in docs/resilience.md; each test below backs one. Nodes run the `sim` engine
(real processes, real time) so a fault lands where it is aimed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import pytest

from ollamamax.testing.cluster import LocalCluster

MODEL = "sim:1b"
NODE_ARGS = ["--sim-profile", "cpu-small", "--sim-model", f"{MODEL}=100000000",
             "--num-parallel", "4"]
TOKEN_S = 1 / 130  # cpu-small decodes ~130 tokens/s per stream (slower when busy)


@dataclass
class Result:
    status: int = 0
    lines: list[dict[str, Any]] = field(default_factory=list)
    transport_error: str = ""  # the connection failed or hung: the request was lost
    elapsed: float = 0.0

    @property
    def done(self) -> bool:
        return self.status == 200 and bool(self.lines) and self.lines[-1].get("done") is True

    @property
    def error(self) -> str | None:
        """The error chunk a broken stream ended with (or an error answer's message)."""
        return self.lines[-1].get("error") if self.lines else None

    @property
    def lost(self) -> bool:
        return bool(self.transport_error) or not (self.done or self.error)


def generate(url: str, tokens: int = 130, stream: bool = True, first: threading.Event | None
             = None, timeout: float = 60.0) -> Result:
    """One request; `first` is set when its first line arrives."""
    result = Result()
    started = time.monotonic()
    body = {"model": MODEL, "prompt": "tell me a story", "stream": stream,
            "options": {"num_predict": tokens}}
    try:
        with httpx.stream("POST", url + "/api/generate", json=body, timeout=timeout) as r:
            result.status = r.status_code
            for line in r.iter_lines():
                if line.strip():
                    result.lines.append(json.loads(line))
                    if first is not None:
                        first.set()
    except httpx.HTTPError as exc:
        result.transport_error = repr(exc)
    result.elapsed = time.monotonic() - started
    return result


def metric(cluster: LocalCluster, name: str, **labels: str) -> float:
    with httpx.Client(timeout=5) as client:
        text = client.get(cluster.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()))


def serving(cluster: LocalCluster) -> str:
    """The node with the most requests in flight."""
    return max(cluster.nodes(), key=lambda n: n["in_flight"])["id"]


def warm(cluster: LocalCluster) -> None:
    """Load the model on every node (directly, not through the gateway)."""
    for name in cluster.supervisor.children:
        if name.startswith("node-"):
            httpx.post(cluster.node(name).url + "/api/generate",
                       json={"model": MODEL, "keep_alive": "10m"}, timeout=30).raise_for_status()


def wait_for(predicate, within: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {within:g} s")


def start(tmp_path, nodes: int = 2, env: dict[str, str] | None = None, **kwargs) -> LocalCluster:
    cluster = LocalCluster(tmp_path, engine="sim", nodes=nodes, node_args=NODE_ARGS,
                           env=env, **kwargs).start()
    warm(cluster)
    return cluster


@pytest.fixture
def clusters():
    started: list[LocalCluster] = []
    yield started
    for cluster in started:
        cluster.stop()  # SIGCONT first: a paused node is never left behind


# -- nodes killed and paused ------------------------------------------------------------------


def test_node_killed_under_load_fails_no_request_that_had_not_started(tmp_path, clusters):
    cluster = start(tmp_path, nodes=3)
    clusters.append(cluster)
    first = threading.Event()
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(generate, cluster.url, 200, i % 3 != 0, first) for i in range(16)]
        assert first.wait(20)
        time.sleep(0.3)  # every node has streams under way
        cluster.kill(serving(cluster))
        results = [f.result(timeout=90) for f in futures]
    assert not [r for r in results if r.lost]  # nothing hung, nothing dropped silently
    # a non-streamed answer has no first byte until it is complete: every one was answered
    assert all(r.done for i, r in enumerate(results) if i % 3 == 0)
    broken = [r for r in results if not r.done]
    for r in broken:  # only streams cut after their first chunk, ending with an error chunk
        assert r.status == 200 and len(r.lines) > 1 and "node" in r.error


def test_paused_node_costs_at_most_the_ttft_timeout_and_resumes(tmp_path, clusters):
    ttft = 2.0
    cluster = start(tmp_path, env={"OLLAMAMAX_GATEWAY_TTFT_TIMEOUT": str(ttft)})
    clusters.append(cluster)
    first = threading.Event()
    with ThreadPoolExecutor(max_workers=12) as pool:
        long_stream = pool.submit(generate, cluster.url, 400, True, first)
        assert first.wait(20)
        victim = serving(cluster)
        cluster.pause(victim)
        paused_at = time.monotonic()
        # more than the other node's slots: some go to the paused node before anyone knows
        results = list(pool.map(lambda _: generate(cluster.url, 40), range(8)))
        assert all(r.done for r in results), [r.error or r.transport_error for r in results]
        assert max(r.elapsed for r in results) < ttft + 5.0  # generous: TTFT timeout + the work
        moved = (metric(cluster, "ollamamax_gateway_retries_total", reason="timeout")
                 + metric(cluster, "ollamamax_gateway_retries_total", reason="connect"))
        assert moved >= 1  # some really were sent to the paused node and moved
        time.sleep(max(0.0, 3.0 - (time.monotonic() - paused_at)))
        cluster.resume(victim)
        resumed = long_stream.result(timeout=60)
    assert resumed.done  # the stream under way when the node stopped went on when it resumed
    cluster.wait_nodes(healthy=2)
    assert generate(cluster.url, 8).done


# -- the fault proxy: slow links, resets, cuts ------------------------------------------------


def test_node_slowed_past_the_ttft_timeout_is_ejected_and_costs_at_most_the_timeout(
        tmp_path, clusters):
    ttft = 0.75
    # slower than the TTFT timeout, not than the health checks' timeout: only the requests'
    # outcomes can tell (a link slower than both is found down by the health checks)
    cluster = start(tmp_path, env={"OLLAMAMAX_GATEWAY_TTFT_TIMEOUT": str(ttft),
                                   "OLLAMAMAX_GATEWAY_HEALTH_TIMEOUT": "3"},
                    proxied=["node-1"], gateway_args=["--strategy", "round_robin"])
    clusters.append(cluster)
    cluster.add_toxic("node-1", "latency@downstream:latency=1500")
    results = [generate(cluster.url, 8, stream=i % 2 == 0) for i in range(14)]
    assert all(r.done for r in results), [r.error or r.transport_error for r in results]
    assert max(r.elapsed for r in results) < ttft + 3.0
    node = {n["id"]: n for n in cluster.nodes()}["node-1"]
    assert node["ejected"] and node["breaker"] == "open"
    assert metric(cluster, "ollamamax_gateway_ejections_total", node="node-1") == 1
    assert metric(cluster, "ollamamax_gateway_retries_total", reason="timeout") == 5


def test_connection_resets_and_cuts_never_hang_a_client(tmp_path, clusters):
    cluster = start(tmp_path, proxied=["node-1"], gateway_args=["--strategy", "round_robin"])
    clusters.append(cluster)
    # reset after 300 ms: streams through node-1 are cut mid-way
    cluster.add_toxic("node-1", "reset_peer@downstream:timeout=300")
    results = [generate(cluster.url, 120, timeout=30) for _ in range(4)]
    assert not [r for r in results if r.lost]
    cut = [r for r in results if not r.done]
    assert cut and all(r.status == 200 and r.error for r in cut)
    # reset before the first byte: retried on node-2, the client sees nothing
    cluster.clear_toxics("node-1")
    cluster.add_toxic("node-1", "reset_peer@upstream:timeout=0")
    results = [generate(cluster.url, 20) for _ in range(4)]
    assert all(r.done for r in results), [r.error or r.transport_error for r in results]
    # the answer cut after 600 bytes (an orderly close): an error chunk, not a hang
    cluster.clear_toxics("node-1")
    cluster.wait_nodes(healthy=2)  # the resets may have failed its health checks too
    cluster.add_toxic("node-1", "limit_data@downstream:bytes=600")
    results = [generate(cluster.url, 120, timeout=30) for _ in range(2)]
    assert not [r for r in results if r.lost]
    assert any(r.error and r.status == 200 for r in results)


# -- 1,000 streams ------------------------------------------------------------------------------


async def test_a_thousand_concurrent_streams_through_one_gateway(tmp_path, clusters):
    # Both nodes start cold: a 5 s load (sim time x 10) holds the first requests while the
    # rest arrive, so all 1,000 are in the gateway at once; then all stream together.
    cluster = LocalCluster(tmp_path, engine="sim", nodes=2, node_args=[
        "--sim-profile", "cpu-small", "--sim-model", f"{MODEL}=300000000",
        "--num-parallel", "500", "--max-queue", "1000", "--sim-speed", "0.1"]).start()
    clusters.append(cluster)
    streams = 1000
    peak = 0

    async def one(session: aiohttp.ClientSession) -> bool:
        body = {"model": MODEL, "prompt": "hi", "options": {"num_predict": 10}}
        async with session.post(cluster.url + "/api/generate", json=body) as r:
            lines = [json.loads(line) for line in (await r.read()).splitlines() if line.strip()]
        return r.status == 200 and len(lines) == 11 and lines[-1].get("done") is True

    async def watch(session: aiohttp.ClientSession) -> None:
        nonlocal peak
        while True:
            async with session.get(cluster.url + "/metrics") as r:
                text = await r.text()
            peak = max(peak, int(float(next(line.split()[1] for line in text.splitlines()
                                            if line.startswith("ollamamax_gateway_in_flight ")))))
            await asyncio.sleep(0.1)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=90)) as session:
        watcher = asyncio.ensure_future(watch(session))
        done = await asyncio.gather(*(one(session) for _ in range(streams)))
        watcher.cancel()
    assert all(done), done.count(False)
    assert peak == streams  # all of them in the gateway at once
    assert "unexpected error" not in cluster.supervisor.children["gateway"].log.read_text()


# -- stopping: the gateway on SIGTERM, a node drained -----------------------------------------


def test_gateway_sigterm_lets_streams_finish_and_refuses_new_connections(tmp_path, clusters):
    cluster = start(tmp_path)
    clusters.append(cluster)
    gateway = cluster.supervisor.children["gateway"]
    first = threading.Event()
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(generate, cluster.url, 150, True, first) for _ in range(6)]
        assert first.wait(20)
        wait_for(lambda: sum(n["in_flight"] for n in cluster.nodes()) == 6, what="6 streams")
        cluster.supervisor.signal("gateway", signal.SIGTERM)
        wait_for(lambda: _refused(cluster.url), within=5, what="new connections refused")
        results = [f.result(timeout=60) for f in futures]
    assert all(r.done for r in results), [r.error or r.transport_error for r in results]
    assert gateway.proc.wait(timeout=15) == 0
    assert "drained: 6 requests in flight finished" in gateway.log.read_text()


def test_gateway_drain_deadline_ends_streams_with_an_error_chunk(tmp_path, clusters):
    cluster = start(tmp_path, env={"OLLAMAMAX_GATEWAY_DRAIN_TIMEOUT": "0.5"})
    clusters.append(cluster)
    gateway = cluster.supervisor.children["gateway"]
    first = threading.Event()
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(generate, cluster.url, 1500, True, first) for _ in range(2)]
        assert first.wait(20)
        wait_for(lambda: sum(n["in_flight"] for n in cluster.nodes()) == 2, what="2 streams")
        cluster.supervisor.signal("gateway", signal.SIGTERM)
        results = [f.result(timeout=30) for f in futures]
    assert all(r.status == 200 and "shutting down" in (r.error or "") for r in results)
    assert gateway.proc.wait(timeout=15) == 0


def test_drained_node_takes_no_new_work_and_finishes_its_streams_before_exiting(
        tmp_path, clusters):
    cluster = start(tmp_path)
    clusters.append(cluster)
    first = threading.Event()
    with ThreadPoolExecutor(max_workers=8) as pool:
        running = pool.submit(generate, cluster.url, 300, True, first)
        assert first.wait(20)
        victim = serving(cluster)
        url = cluster.node(victim).url
        drained = subprocess.run([sys.executable, "-m", "ollamamax", "node", "drain", url],
                                 capture_output=True, text=True, timeout=30, check=True)
        assert "draining" in drained.stdout
        assert running.result(timeout=60).done  # its own stream finished
        served = {n["id"]: n["served"] for n in cluster.nodes()}
        # one request alone may be the one that finds out (its 503 sends it elsewhere and
        # marks the node draining); the rest, sent at once, must all go elsewhere
        results = [generate(cluster.url, 20)]
        results += pool.map(lambda _: generate(cluster.url, 20), range(5))
        assert all(r.done for r in results), [r.error or r.transport_error for r in results]
        rows = {n["id"]: n for n in cluster.nodes()}
        assert rows[victim]["draining"] and rows[victim]["served"] <= served[victim] + 1
        # SIGTERM drains too, and the process waits for what it still runs
        subprocess.run([sys.executable, "-m", "ollamamax", "node", "drain", "--undo", url],
                       check=True, capture_output=True, timeout=30)
        wait_for(lambda: not {n["id"]: n for n in cluster.nodes()}[victim]["draining"],
                 what="undrained")
        first.clear()
        last = pool.submit(generate, url, 300, True, first)  # straight to the node
        assert first.wait(20)
        cluster.supervisor.signal(victim, signal.SIGTERM)
        results = list(pool.map(lambda _: generate(cluster.url, 20), range(4)))
        assert all(r.done for r in results), [r.error or r.transport_error for r in results]
        assert last.result(timeout=60).done
    assert cluster.node(victim).proc.wait(timeout=15) == 0


def _refused(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=1)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False
