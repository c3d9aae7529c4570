"""What nodes and the gateway say about themselves: health, telemetry, metrics, HEAD /."""

from __future__ import annotations

import httpx
import ollama
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ollamamax.testing.cluster import LocalCluster

MODEL = "m:1b"


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("observability"), engine="sim", nodes=2,
                     node_args=["--sim-profile", "instant", "--sim-model", f"{MODEL}=123456",
                                "--num-parallel", "2"]).start()
    yield c
    c.stop()


def samples(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(url + "/metrics", timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics, name, **labels) -> float:
    return sum(v for (n, ls), v in metrics.items()
               if n == name and set(labels.items()) <= set(ls))


def test_head_and_get_root(sim):
    for url in (sim.url, sim.node("node-1").url):
        assert httpx.head(url + "/").status_code == 200
        assert httpx.get(url + "/").text == "Ollama is running"


def test_node_health_and_telemetry(sim):
    with ollama.Client(host=sim.url) as client:
        client.generate(model=MODEL, prompt="warm up", keep_alive="10m")
    docs = [httpx.get(sim.node(n).url + "/telemetry").json() for n in ("node-1", "node-2")]
    for name, doc in zip(("node-1", "node-2"), docs, strict=True):
        assert httpx.get(sim.node(name).url + "/health").json()["status"] == "ok"
        assert doc["node_id"] == name and doc["engine"] == "sim"
        assert doc["models"] == [{"name": MODEL, "size": 123456, "digest": doc["models"][0]["digest"]}]
        assert doc["memory"]["rss_bytes"] > 0 and doc["memory"]["total_bytes"] > 0
        assert doc["queue_depth"] == 0
    loaded = [m for doc in docs for m in doc["loaded"]]
    assert len(loaded) == 1  # one node took the request and keeps the model
    assert loaded[0]["name"] == MODEL and loaded[0]["slots"] == 2 and loaded[0]["busy"] == 0
    assert loaded[0]["expires_at"] > 0


def test_gateway_metrics_move_with_requests(sim):
    before = samples(sim.url)
    with ollama.Client(host=sim.url) as client:
        client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        list(client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True))
        with pytest.raises(ollama.ResponseError):
            client.chat(model="absent:1b", messages=[{"role": "user", "content": "hi"}])
    after = samples(sim.url)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("ollamamax_gateway_requests_total", endpoint="chat", status="200") == 2
    assert delta("ollamamax_gateway_requests_total", endpoint="chat", status="404") == 1
    assert delta("ollamamax_gateway_request_duration_seconds_count", endpoint="chat") == 3
    assert delta("ollamamax_gateway_ttft_seconds_count", endpoint="chat") == 2
    assert value(after, "ollamamax_gateway_in_flight") == 0
    assert value(after, "ollamamax_gateway_node_healthy", node="node-1") == 1
    assert value(after, "ollamamax_gateway_node_healthy", node="node-2") == 1
    node_total = sum(value(samples(sim.node(n).url), "ollamamax_node_requests_total",
                           endpoint="chat", status="200") for n in ("node-1", "node-2"))
    assert node_total >= 2


def test_admin_nodes_shows_the_view(sim):
    nodes = {n["id"]: n for n in sim.nodes()}
    assert set(nodes) == {"node-1", "node-2"}
    assert all(n["healthy"] and n["engine"] == "sim" and n["models"] == [MODEL]
               for n in nodes.values())
    assert httpx.get(sim.url + "/health").json()["nodes_healthy"] == 2
