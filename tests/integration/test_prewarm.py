"""With `scheduler.prewarm`, the gateway loads a model on a second node before any request
needs it there: demand for it exceeds what the one loaded copy serves."""

from __future__ import annotations

import time

import httpx

from ollamamax.testing.cluster import LocalCluster

MODEL = "warm:1b"
BODY = {"model": MODEL, "prompt": "hello", "stream": False, "options": {"num_predict": 40}}


def loaded_on(cluster: LocalCluster) -> set[str]:
    return {n["id"] for n in cluster.nodes() if MODEL in n["loaded"]}


def test_a_model_in_demand_is_loaded_ahead_on_a_node_no_request_went_to(tmp_path):
    env = {"OLLAMAMAX_SCHEDULER_PREWARM": "true", "OLLAMAMAX_SCHEDULER_PREWARM_INTERVAL": "0.5"}
    node_args = ["--sim-profile", "cpu-small", "--sim-model", f"{MODEL}=1000000",
                 "--num-parallel", "1"]
    with LocalCluster(tmp_path, engine="sim", nodes=2, node_args=node_args, env=env) as c, \
            httpx.Client(base_url=c.url, timeout=30) as client:
        c.wait_nodes(healthy=2)
        served: set[str] = set()
        deadline = time.monotonic() + 20
        while len(loaded_on(c)) < 2:  # one request at a time: one copy could serve them all
            assert time.monotonic() < deadline, f"only {loaded_on(c)} loaded {MODEL}"
            r = client.post("/api/generate", json=BODY)
            assert r.status_code == 200
            served.add(r.headers["X-OllamaMax-Node"])
        assert len(served) == 1  # every request went to one node; the other was prewarmed
        metrics = client.get("/metrics").text
        assert "ollamamax_prewarm_loads_total 1.0" in metrics
        assert "ollamamax_prewarm_wasted_total 0.0" in metrics
