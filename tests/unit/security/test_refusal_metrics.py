"""The key guard counts what it refuses: 401/403 by reason, 429 by key and limit, as the
Prometheus text a scraper reads from ``/metrics`` says."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from ollamamax import config
from ollamamax.gateway.app import Gateway
from ollamamax.scheduler.queue import QueueFull
from ollamamax.security import keys

BACKEND = "n1=http://127.0.0.1:9"  # nobody listens: the checks here come before any node
REFUSED = "ollamamax_gateway_auth_refused_total"
LIMITED = "ollamamax_gateway_rate_limited_total"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def counts(text: str, name: str) -> dict[tuple[str, str], float]:
    return {(s.labels["key"], s.labels["reason"]): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name}


@pytest.fixture
def keyring(tmp_path):
    path = tmp_path / "keys.json"
    return path, {"alice": keys.add(path, "alice"), "root": keys.add(path, "root", "admin"),
                  "slow": keys.add(path, "slow", rps=0.01, burst=1),
                  "metered": keys.add(path, "metered", tokens_per_min=60)}


async def test_401_403_and_429_are_counted_by_key_and_reason(keyring, monkeypatch):
    path, key = keyring
    gw = Gateway(config.load(env={}, overrides={"gateway.backends": (BACKEND,),
                                                "security.keys_file": str(path)}))

    async def forward(request, route, model, path, body, adapter):  # instead of a node
        if route.key == "alice":
            raise QueueFull("too many requests waiting for this key (1)", 429, 1.0)
        return adapter.whole(200, b'{"done":true,"prompt_eval_count":50,"eval_count":20}')

    monkeypatch.setattr(gw.path, "forward", forward)
    generate = {"model": "m:1b", "prompt": "hi", "stream": False}
    async with TestClient(TestServer(gw.app())) as client:
        assert (await client.get("/api/tags")).status == 401
        assert (await client.get("/api/tags", headers=auth(key["root"] + "x"))).status == 401
        assert (await client.get("/api/tags", headers=auth(key["root"] + "y"))).status == 401
        assert (await client.get("/admin/nodes", headers=auth(key["alice"]))).status == 403
        assert (await client.get("/api/tags", headers=auth(key["slow"]))).status == 200
        assert (await client.get("/api/tags", headers=auth(key["slow"]))).status == 429
        r = await client.post("/api/generate", json=generate, headers=auth(key["metered"]))
        assert r.status == 200  # 70 tokens charged against 60 a minute: in debt now
        r = await client.post("/api/generate", json=generate, headers=auth(key["metered"]))
        assert r.status == 429
        r = await client.post("/api/generate", json=generate, headers=auth(key["alice"]))
        assert r.status == 429 and "waiting for this key" in (await r.json())["error"]
        assert (await client.get("/api/tags", headers=auth(key["root"]))).status == 200
        r = await client.get("/metrics", headers=auth(key["root"]))
        assert r.status == 200
        text = await r.text()
    assert counts(text, REFUSED) == {("", "missing"): 1, ("", "invalid"): 2,
                                     ("alice", "not_admin"): 1}
    assert counts(text, LIMITED) == {("slow", "requests_per_s"): 1,
                                     ("metered", "tokens_per_min"): 1, ("alice", "queue"): 1}
    for secret in key.values():
        assert secret not in text  # names only, never the keys


async def test_a_gateway_without_keys_counts_nothing(tmp_path):
    gw = Gateway(config.load(env={}, overrides={"gateway.backends": (BACKEND,),
                                                "security.keys_file": str(tmp_path / "k.json")}))
    async with TestClient(TestServer(gw.app())) as client:
        assert (await client.get("/admin/nodes")).status == 200  # open: no key exists
        text = await (await client.get("/metrics")).text()
    assert counts(text, REFUSED) == {} and counts(text, LIMITED) == {}
    assert f"# HELP {REFUSED.removesuffix('_total')}" in text  # defined all the same
