"""A node killed with SIGKILL while requests run: no request that had not started streaming
is lost, and streams that had started end with an error chunk instead of hanging."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import ollama
import pytest

from ollamamax.testing.cluster import LocalCluster
from ollamamax.testing.tiny_gguf import import_tiny_model

MODEL = "tiny:latest"
LONG = {"num_predict": 600, "temperature": 0.8, "seed": 1}  # ~0.5 s: long enough to be cut


@pytest.fixture
def cluster(tmp_path):
    with LocalCluster(tmp_path, engine="llamacpp", nodes=3,
                      prepare=lambda s: import_tiny_model(s.root, name=MODEL)) as c:
        yield c


class Outcome:
    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.chunks = 0
        self.done = False
        self.error: BaseException | None = None


def run_one(url: str, stream: bool, started: threading.Event) -> Outcome:
    outcome = Outcome(stream)
    messages = [{"role": "user", "content": "Write a very long story."}]
    client = ollama.Client(host=url, timeout=60)
    try:
        if stream:
            for chunk in client.chat(model=MODEL, messages=messages, options=LONG, stream=True):
                outcome.chunks += 1
                started.set()
                outcome.done = bool(chunk.done)
        else:
            outcome.done = bool(client.chat(model=MODEL, messages=messages, options=LONG).done)
    except Exception as exc:  # noqa: BLE001 - recorded and judged below
        outcome.error = exc
    finally:
        client.close()
    return outcome


def retries(cluster) -> float:
    import urllib.request

    with urllib.request.urlopen(cluster.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ollamamax_gateway_retries_total"))


def busiest(cluster) -> str:
    nodes = cluster.nodes()
    return max(nodes, key=lambda n: n["in_flight"])["id"]


def test_kill_node_under_load_loses_no_unstarted_request(cluster):
    started = threading.Event()
    with ThreadPoolExecutor(max_workers=18) as pool:
        futures = [pool.submit(run_one, cluster.url, i % 2 == 0, started) for i in range(18)]
        assert started.wait(30), "no stream started"
        time.sleep(0.2)  # let every node have work in flight
        victim = busiest(cluster)
        cluster.kill(victim)
        outcomes = [f.result(timeout=120) for f in futures]

    not_started = [o for o in outcomes if o.chunks == 0]
    broken = [o for o in outcomes if o.error is not None]
    # Every request that had received nothing when the node died was answered elsewhere.
    assert all(o.done and o.error is None for o in not_started), [o.error for o in not_started]
    # A stream cut mid-way ends with Ollama's error chunk, which the client raises as such.
    for o in broken:
        assert o.stream and o.chunks > 0
        assert isinstance(o.error, ollama.ResponseError), repr(o.error)
        assert "node" in str(o.error)
    assert sum(o.done for o in outcomes) == len(outcomes) - len(broken)
    # The kill really hit work in flight: requests were retried on other nodes.
    assert retries(cluster) > 0
    cluster.wait_nodes(healthy=2)
    assert "unexpected error" not in cluster.log("gateway")


def test_dead_node_is_marked_down_then_back_up(cluster):
    cluster.kill("node-2")
    nodes = {n["id"]: n for n in cluster.wait_nodes(healthy=2)}
    assert not nodes["node-2"]["healthy"] and nodes["node-2"]["last_error"]
    with ollama.Client(host=cluster.url, timeout=30) as client:
        for _ in range(6):  # every request lands on a live node
            assert client.generate(model=MODEL, prompt="hi", options={"num_predict": 4}).done
    cluster.restart("node-2")
    cluster.wait_nodes(healthy=3)
