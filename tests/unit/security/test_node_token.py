"""A node with a cluster token: only /health is open; the 413 cap keeps Ollama's shape."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ollamamax import config
from ollamamax.config import NodeConfig
from ollamamax.node import agent as node_agent
from ollamamax.node import engines
from ollamamax.node.agent import NodeAgent
from ollamamax.security.cluster import HEADER

MODEL = "simmodel:1b"


def node(tmp_path, token: str = "") -> NodeAgent:
    conf = NodeConfig(engine="sim", models_dir=str(tmp_path), sim_speed=100,
                      sim_models=(f"{MODEL}=1000000",))
    security = config.load(env={}, overrides={"security.cluster_token": token or None}).security
    return NodeAgent(conf, engines.create(conf), security)


@pytest.fixture
async def guarded(tmp_path):
    async with TestClient(TestServer(node(tmp_path, "s3cret-token").app())) as c:
        yield c


async def test_every_path_but_health_needs_the_token(guarded):
    assert (await guarded.get("/health")).status == 200
    for method, path in (("GET", "/"), ("GET", "/api/tags"), ("GET", "/telemetry"),
                         ("GET", "/metrics"), ("POST", "/admin/drain"), ("POST", "/api/chat")):
        r = await guarded.request(method, path, headers={"Authorization": "Bearer s3cret-token"})
        assert r.status == 401, path
        body = await r.json()
        assert "cluster token" in body["error"] and "s3cret-token" not in body["error"]
    r = await guarded.post("/api/generate", headers={HEADER: "s3cret-token"},
                           json={"model": MODEL, "prompt": "hi", "stream": False,
                                 "options": {"num_predict": 2}})
    assert r.status == 200 and (await r.json())["done"] is True


async def test_a_node_without_a_token_is_open(tmp_path):
    async with TestClient(TestServer(node(tmp_path).app())) as c:
        assert (await c.get("/api/tags")).status == 200


async def test_an_oversized_body_is_413_in_ollamas_shape(tmp_path, monkeypatch):
    monkeypatch.setattr(node_agent, "MAX_BODY", 1000)
    async with TestClient(TestServer(node(tmp_path).app())) as c:
        r = await c.post("/api/chat", data=b"{" + b" " * 2000 + b"}",
                         headers={"Content-Type": "application/json"})
        assert r.status == 413
        assert "exceeds the limit of 1000" in (await r.json())["error"]

        async def chunks():  # no Content-Length: the cap counts what arrives
            for _ in range(5):
                yield b" " * 400

        r = await c.post("/api/chat", data=chunks())
        assert r.status == 413 and "error" in await r.json()


def test_a_node_open_to_the_network_is_warned_about():
    from ollamamax.security.cluster import open_warning

    assert "no cluster token" in open_warning("0.0.0.0:11435", "")
    assert open_warning("0.0.0.0:11435", "t") == open_warning("127.0.0.1:0", "") == ""
