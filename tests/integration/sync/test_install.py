"""The sim engine answers Ollama's model creation API as Ollama does (checked with the official
`ollama` client), and `OllamaInstaller` installs a store's model through it."""

from __future__ import annotations

import hashlib

import aiohttp
import ollama
import pytest

from ollamamax import server
from ollamamax.config import NodeConfig
from ollamamax.errors import EngineError
from ollamamax.models.store import ModelStore
from ollamamax.node import engines
from ollamamax.node.agent import NodeAgent
from ollamamax.sync.install import OllamaInstaller
from ollamamax.testing.tiny_gguf import import_tiny_model, write_tiny_gguf


@pytest.fixture
async def sim_ollama(tmp_path):
    """A sim node standing in for a stock Ollama, on 127.0.0.1 port 0."""
    conf = NodeConfig(engine="sim", models_dir=str(tmp_path / "ollama"), sim_speed=100)
    agent = NodeAgent(conf, engines.create(conf))
    runner, url = await server.start_site(agent.app(), "127.0.0.1:0", shutdown_timeout=1)
    yield url
    await runner.cleanup()


async def tags(url: str) -> dict[str, str]:
    async with aiohttp.ClientSession() as s, s.get(url + "/api/tags") as r:
        return {m["name"]: m["digest"] for m in (await r.json())["models"]}


async def test_the_official_client_creates_a_model_from_a_blob(sim_ollama, tmp_path) -> None:
    gguf = write_tiny_gguf(tmp_path / "m.gguf", seed=3)
    async with ollama.AsyncClient(host=sim_ollama) as client:
        digest = await client.create_blob(gguf)
        assert digest == f"sha256:{hashlib.sha256(gguf.read_bytes()).hexdigest()}"
        statuses = [p.status async for p in await client.create(
            model="made:1", files={"model.gguf": digest}, stream=True)]
        assert statuses[-1] == "success" and "made:1" in await tags(sim_ollama)
        shown = await client.show("made:1")
        assert shown.details.family == "llama"


async def test_blobs_are_checked_and_bad_creates_are_400_in_ollamas_shape(sim_ollama) -> None:
    good = "sha256:" + hashlib.sha256(b"hello").hexdigest()
    async with aiohttp.ClientSession(base_url=sim_ollama) as s:
        async with s.head(f"/api/blobs/{good}") as r:
            assert r.status == 404
        async with s.post(f"/api/blobs/{good}", data=b"not hello") as r:
            assert r.status == 400 and "digest mismatch" in (await r.json())["error"]
        async with s.head(f"/api/blobs/{good}") as r:
            assert r.status == 404  # nothing was kept
        async with s.post(f"/api/blobs/{good}", data=b"hello") as r:
            assert r.status == 201
        async with s.head(f"/api/blobs/{good}") as r:
            assert r.status == 200
        async with s.head("/api/blobs/sha256:..%2F..%2Fetc%2Fpasswd") as r:
            assert r.status == 400
        for body in ({"model": "x:1", "files": {"model.gguf": "sha256:" + "0" * 64}},
                     {"model": "x:1", "files": {"model.gguf": good}},  # not a GGUF file
                     {"model": "x:1", "files": {"notes.txt": good}}, {"files": {}}):
            async with s.post("/api/create", json=body) as r:
                assert r.status == 400, body
                assert set(await r.json()) == {"error"}


async def test_the_installer_uploads_once_and_creates(sim_ollama, tmp_path) -> None:
    source = ModelStore(tmp_path / "node")
    import_tiny_model(source.root, "tiny:latest", seed=5)
    installer = OllamaInstaller(sim_ollama)
    try:
        said = await installer.install(source, "tiny:latest")
        assert "(blob uploaded)" in said
        assert "tiny:latest" in await tags(sim_ollama)
        again = await installer.install(source, "tiny:latest")
        assert "uploaded" not in again  # HEAD said Ollama has it
        with pytest.raises(EngineError, match="could not create"):
            await installer.create("bad:1", {"model.gguf": "sha256:" + "1" * 64})
    finally:
        await installer.close()


async def test_reconcile_installs_only_what_ollama_does_not_list(sim_ollama, tmp_path) -> None:
    source = ModelStore(tmp_path / "node")
    import_tiny_model(source.root, "one:1", seed=5)
    import_tiny_model(source.root, "two:1", seed=6)
    installer = OllamaInstaller(sim_ollama)
    try:
        await installer.install(source, "one:1")
        said = await installer.reconcile(source)
        assert len(said) == 1 and "two:1" in said[0]
        assert {"one:1", "two:1"} <= set(await tags(sim_ollama))
        assert await installer.reconcile(source) == []
    finally:
        await installer.close()
