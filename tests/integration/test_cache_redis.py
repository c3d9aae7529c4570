"""Two gateways sharing one real redis-server (the L3 tier) over one llamacpp node: what one
records the other replays, and a model change empties the shared tier for both."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from ollamamax.testing.cluster import LocalCluster
from ollamamax.testing.redis import LocalRedis, missing_reason
from ollamamax.testing.tiny_gguf import import_tiny_model

pytestmark = pytest.mark.slow

MODEL = "tiny:latest"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post(url: str, path: str, body: dict) -> tuple[bytes, str]:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with _DIRECT.open(request, timeout=60) as reply:
        return reply.read(), reply.headers.get("X-OllamaMax-Cache", "")


def until(condition, what: str, within: float = 15.0):
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory):
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    run_dir = tmp_path_factory.mktemp("cache-redis")
    with LocalRedis(run_dir / "redis") as redis:
        env = {"OLLAMAMAX_CACHE_TIERS": "memory,redis", "OLLAMAMAX_CACHE_REDIS_URL": redis.url}
        with LocalCluster(run_dir, engine="llamacpp", nodes=1, env=env,
                          prepare=lambda store: import_tiny_model(store.root, name=MODEL)) as c:
            node_url = c.nodes()[0]["url"]
            second = c.supervisor.start("gateway-b", [
                "gateway", "--listen", "127.0.0.1:0", "--backend", f"node-1={node_url}"], env)
            url_b = c.supervisor.wait_ready(second)
            until(lambda: any(n["healthy"] for n in json.loads(
                _DIRECT.open(url_b + "/admin/nodes", timeout=5).read())["nodes"]),
                "the second gateway never saw the node")
            yield c, c.url, url_b, node_url


def test_one_gateway_replays_what_the_other_recorded(gateways):
    _, url_a, url_b, _ = gateways
    body = {"model": MODEL, "input": "shared between gateways"}
    recorded, state = post(url_a, "/api/embed", body)
    assert state == "miss"
    replayed, state = until(lambda: (r := post(url_b, "/api/embed", body))[1] != "miss" and r,
                            "the second gateway never read the shared tier")
    assert state == "hit; tier=redis" and replayed == recorded
    assert post(url_b, "/api/embed", body) == (recorded, "hit; tier=memory")  # promoted


def test_a_model_change_empties_the_shared_tier_for_both(gateways):
    cluster, url_a, url_b, node_url = gateways
    body = {"model": MODEL, "input": "recorded before the change"}
    old, _ = post(url_a, "/api/embed", body)
    until(lambda: post(url_b, "/api/embed", body)[1].startswith("hit"), "never shared")
    import_tiny_model(cluster.run_dir / "node-1" / "models", name=MODEL, seed=5)
    post(node_url, "/api/generate", {"model": MODEL, "keep_alive": 0})  # unload the old weights

    def invalidated(url: str) -> bool:
        text = _DIRECT.open(url + "/metrics", timeout=5).read().decode()
        return "ollamamax_cache_invalidations_total 1.0" in text

    until(lambda: invalidated(url_a) and invalidated(url_b), "a gateway kept the old digest")
    fresh_b, state_b = post(url_b, "/api/embed", body)
    assert state_b == "miss"
    assert json.loads(fresh_b)["embeddings"] != json.loads(old)["embeddings"]
    fresh_a, state_a = until(lambda: (r := post(url_a, "/api/embed", body))[1] != "miss" and r,
                             "the first gateway never read the fresh answer")
    assert (state_a, fresh_a) == ("hit; tier=redis", fresh_b)
