"""Pulling from a registry over real sockets: the test registry, the Puller, a node's /api/pull
(asked by the official `ollama` client) and the gateway's."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import ollama
import pytest

from ollamamax.config import NodeConfig, SyncConfig
from ollamamax.errors import BadRequest, NotFound, Unavailable
from ollamamax.models.registry import Puller, PullError
from ollamamax.models.store import ModelStore
from ollamamax.node import engines
from ollamamax.node.agent import NodeAgent
from ollamamax.server import start_site
from ollamamax.testing.registry import LocalRegistry
from ollamamax.testing.tiny_gguf import import_tiny_model

SMALL_PART = 64 << 10  # the tiny model's weights (~0.5 MB) become 4 parts of this or more


@pytest.fixture
def origin(tmp_path):
    """A models folder in Ollama's layout holding tiny:latest; what the registry serves."""
    model = import_tiny_model(tmp_path / "origin", name="tiny:latest")
    return model, ModelStore(tmp_path / "origin")


@pytest.fixture
async def registry(origin):
    async with LocalRegistry(origin[1].root) as reg:
        yield reg


def puller(store, registry, **kwargs):
    config = SyncConfig(pull_parts=kwargs.pop("pull_parts", 4),
                        stall_timeout=kwargs.pop("stall_timeout", 30.0))
    return Puller(store, config, registry=registry.url, min_part=SMALL_PART, backoff=0.01,
                  **kwargs)


def total_size(model):
    return sum(int(ref["size"]) for ref in [model.manifest["config"], *model.manifest["layers"]])


def partial_progress(store):
    """Bytes the sidecars of the partial area say are on disk, by digest."""
    done = {}
    for path in store.partial.glob("*.json"):
        state = json.loads(path.read_bytes())
        done[state["digest"]] = sum(part[2] for part in state["parts"])
    return done


async def test_pull_writes_the_registrys_model_byte_for_byte(origin, registry, tmp_path):
    model, _ = origin
    registry.redirect_blobs = True  # as registry.ollama.ai sends blobs to its CDN
    store = ModelStore(tmp_path / "node")
    events = []
    pulled = await puller(store, registry).pull("tiny", events.append)
    assert pulled.digest == model.digest  # the manifest as the registry sent it
    assert store.verify() == []
    assert [m.name.short for m in store.list()] == ["tiny:latest"]
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layer = model.model_layer
    mine = [e for e in events if e.get("digest") == layer["digest"]]
    assert mine[-1] == {"status": f"pulling {layer['digest'][7:19]}", "digest": layer["digest"],
                        "total": layer["size"], "completed": layer["size"]}
    starts = sorted(first for digest, first, _ in registry.ranges if digest == layer["digest"])
    assert len(starts) == 4 and starts[0] == 0  # parallel ranged parts
    assert registry.requests["GET cdn"] == len(registry.ranges)
    assert registry.bytes_served == total_size(model)
    assert not list(store.partial.iterdir())  # nothing left behind
    registry.reset_counters()
    await puller(store, registry).pull("tiny")  # already here: only the manifest is asked
    assert registry.bytes_served == 0 and registry.requests["GET manifest"] == 1


async def test_an_interrupted_pull_resumes_fetching_only_what_is_missing(origin, registry, tmp_path):
    model, _ = origin
    store = ModelStore(tmp_path / "node")
    registry.fail_after = 300_000  # the registry cuts every answer after 300 kB in all
    with pytest.raises(PullError, match="no progress"):
        await puller(store, registry, retries=1).pull("tiny")
    assert registry.bytes_served == 300_000
    assert store.list() == [] and store.local_blobs() == []  # nothing Ollama would read
    kept = sum(partial_progress(store).values())
    assert 0 < kept <= 300_000

    registry.fail_after = None
    registry.reset_counters()
    pulled = await puller(store, registry).pull("tiny")
    assert pulled.digest == model.digest and store.verify() == []
    assert registry.bytes_served == total_size(model) - kept  # not one byte twice


async def test_a_stalled_part_is_retried_from_where_it_stopped(origin, registry, tmp_path):
    model, _ = origin
    store = ModelStore(tmp_path / "node")
    registry.stall_after = 100_000  # one answer stops sending mid-body and hangs
    pulled = await puller(store, registry, stall_timeout=2.0).pull("tiny")
    assert pulled.digest == model.digest and store.verify() == []
    assert registry.stall_after is None  # the stall happened
    assert registry.bytes_served == total_size(model)  # the retry asked only for the rest
    assert len(registry.ranges) == 4 + 1 + 1  # 4 parts, the config, one resumed part


async def test_a_corrupt_blob_from_the_registry_is_refused(origin, registry, tmp_path):
    model, _ = origin
    store = ModelStore(tmp_path / "node")
    layer = model.model_layer["digest"]
    registry.corrupt.add(layer)
    with pytest.raises(PullError, match="digest mismatch"):
        await puller(store, registry).pull("tiny")
    assert not store.has_blob(layer) and store.list() == []
    assert not any(p.name.startswith(f"sha256-{layer[7:]}.") for p in store.partial.iterdir()
                   if p.suffix != ".lock")
    registry.corrupt.clear()
    registry.reset_counters()
    await puller(store, registry).pull("tiny")
    assert store.verify() == []
    assert registry.served[layer] == model.model_layer["size"]  # fetched again, whole


async def test_unknown_models_and_unreachable_registries_say_so(registry, tmp_path):
    store = ModelStore(tmp_path / "node")
    with pytest.raises(NotFound, match="pull model manifest: file does not exist"):
        await puller(store, registry).pull("nothing-here:1b")
    nowhere = Puller(store, SyncConfig(), registry="http://127.0.0.1:1")
    with pytest.raises(Unavailable, match=r"cannot reach http://127\.0\.0\.1:1"):
        await nowhere.pull("tiny")


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b/c/d", "tiny:../x", ""])
async def test_path_names_are_refused_before_any_request(registry, tmp_path, name):
    with pytest.raises(BadRequest):
        await puller(ModelStore(tmp_path / "node"), registry).pull(name)
    assert registry.requests == {}


async def test_a_manifest_naming_a_path_as_a_digest_writes_nothing(origin, registry, tmp_path):
    _, src = origin
    evil = src.manifests / "registry.ollama.ai" / "library" / "evil"
    evil.mkdir(parents=True)
    (evil / "latest").write_text(json.dumps({
        "schemaVersion": 2, "config": {"digest": "sha256:../../../../tmp/owned", "size": 3},
        "layers": []}))
    store = ModelStore(tmp_path / "node")
    with pytest.raises(PullError, match="invalid manifest"):
        await puller(store, registry).pull("evil")
    assert not store.root.exists() or not any(store.root.rglob("*owned*"))
    async with aiohttp.ClientSession() as http:
        url = f"{registry.url}/v2/library/tiny/blobs/sha256:..%2F..%2F..%2Fetc%2Fpasswd"
        async with http.get(url) as reply:
            assert reply.status in (400, 404)


async def test_two_pulls_of_one_model_at_once_download_it_once(origin, registry, tmp_path):
    model, _ = origin
    store = ModelStore(tmp_path / "node")
    p = puller(store, registry)
    a, b = await asyncio.gather(p.pull("tiny"), p.pull("tiny"))
    assert a.digest == b.digest == model.digest and store.verify() == []
    assert registry.bytes_served == total_size(model)


# -- a node's POST /api/pull, asked by the official client --------------------------------------


@pytest.fixture
async def node(registry, tmp_path):
    conf = NodeConfig(engine="sim", models_dir=str(tmp_path / "node-models"), listen="127.0.0.1:0")
    agent = NodeAgent(conf, engines.create(conf), sync=SyncConfig(registry=registry.url))
    runner, url = await start_site(agent.app(), conf.listen, shutdown_timeout=1.0)
    yield url, agent
    await runner.cleanup()


async def test_the_ollama_client_pulls_through_a_node(origin, node):
    model, _ = origin
    url, agent = node
    async with ollama.AsyncClient(host=url) as client:
        progress = [p async for p in await client.pull("tiny", stream=True)]
        listed = await client.list()
        again = await client.pull("tiny", stream=False)
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    layer = model.model_layer
    last = [p for p in progress if p.digest == layer["digest"]][-1]
    assert (last.total, last.completed) == (layer["size"], layer["size"])
    assert "tiny:latest" in [m.model for m in listed.models]
    assert agent.blob_store.verify() == []
    assert again.status == "success"


async def test_a_node_answers_pull_errors_as_ollama(node):
    url, _ = node
    async with ollama.AsyncClient(host=url) as client:
        with pytest.raises(ollama.ResponseError, match="file does not exist") as missing:
            await client.pull("nothing-here", stream=False)
        assert missing.value.status_code == 404
        with pytest.raises(ollama.ResponseError, match="file does not exist"):
            async for _ in await client.pull("nothing-here", stream=True):
                pass
    async with aiohttp.ClientSession() as http:
        for body in (b'{"model": "../../etc/passwd"}', b"{oops", b"{}"):
            async with http.post(url + "/api/pull", data=body) as reply:
                assert reply.status == 400
                assert (await reply.json())["error"]


async def test_a_registry_failing_mid_pull_ends_the_stream_with_an_error(registry, node):
    url, agent = node
    agent.puller = Puller(agent.blob_store, SyncConfig(registry=registry.url), retries=0,
                          backoff=0.01)
    registry.fail_after = 100_000
    lines = []
    async with aiohttp.ClientSession() as http, \
            http.post(url + "/api/pull", json={"model": "tiny"}) as reply:
        assert reply.status == 200  # the stream had started
        async for line in reply.content:
            lines.append(json.loads(line))
    assert lines[0] == {"status": "pulling manifest"}
    assert "no progress" in lines[-1]["error"]
    assert agent.blob_store.list() == [] and agent.blob_store.local_blobs() == []


async def test_the_test_registry_answers_head_ranges_and_unknowns(origin, registry):
    model, _ = origin
    layer = model.model_layer
    blob = f"{registry.url}/v2/library/tiny/blobs/{layer['digest']}"
    async with aiohttp.ClientSession() as http:
        async with http.head(blob) as reply:
            assert reply.status == 200 and int(reply.headers["Content-Length"]) == layer["size"]
        async with http.get(blob, headers={"Range": "bytes=10-19"}) as reply:
            assert reply.status == 206
            assert reply.headers["Content-Range"] == f"bytes 10-19/{layer['size']}"
            assert len(await reply.read()) == 10
        async with http.get(blob, headers={"Range": f"bytes={layer['size']}-"}) as reply:
            assert reply.status == 416
        async with http.get(f"{registry.url}/v2/library/tiny/blobs/sha256:{'0' * 64}") as reply:
            assert reply.status == 404
        async with http.get(f"{registry.url}/v2/library/tiny/manifests/latest",
                            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
                            ) as reply:
            assert reply.status == 200 and (await reply.json())["layers"][0]["digest"] == layer["digest"]
    assert registry.bytes_served == 10  # HEAD and refusals send no body


async def test_a_node_with_the_ollama_engine_installs_what_it_pulled(origin, registry, tmp_path):
    """The store keeps the model for peers; the Ollama behind the node gets it to serve."""
    model, _ = origin
    stock = NodeConfig(engine="sim", models_dir=str(tmp_path / "stock"), sim_speed=100)
    stock_runner, stock_url = await start_site(NodeAgent(stock, engines.create(stock)).app(),
                                               "127.0.0.1:0", shutdown_timeout=1.0)
    conf = NodeConfig(engine="ollama", engine_url=stock_url, models_dir=str(tmp_path / "node"))
    agent = NodeAgent(conf, engines.create(conf), sync=SyncConfig(registry=registry.url))
    runner, url = await start_site(agent.app(), "127.0.0.1:0", shutdown_timeout=1.0)
    try:
        async with ollama.AsyncClient(host=url) as client:
            statuses = [p.status async for p in await client.pull("tiny", stream=True)]
            listed = [m.model for m in (await client.list()).models]
    finally:
        await runner.cleanup()
        await stock_runner.cleanup()
    assert statuses[-2].startswith(f"installed tiny:latest into {stock_url}")
    assert statuses[-1] == "success"
    assert "tiny:latest" in listed  # what the ollama engine lists is its Ollama's
    assert ModelStore(tmp_path / "node").get("tiny").digest == model.digest
    stock_store = ModelStore(tmp_path / "stock")
    assert stock_store.get("tiny").model_layer["digest"] == model.model_layer["digest"]


async def test_a_store_that_cannot_be_written_is_a_sentence_not_a_traceback(registry, tmp_path):
    store = ModelStore(tmp_path / "node")
    store.partial.parent.mkdir(parents=True)
    store.partial.write_text("a file where the partial folder should be")
    with pytest.raises(PullError, match="cannot write"):
        await puller(store, registry).pull("tiny")


async def test_leaving_a_pull_early_cancels_it_and_keeps_what_arrived(origin, registry, tmp_path):
    model, _ = origin
    layer = model.model_layer["digest"]
    store = ModelStore(tmp_path / "node")
    registry.stall_after = 200_000  # one part hangs there: the pull cannot end by itself
    events = puller(store, registry, progress_interval=0.0).events("tiny")
    async with contextlib.aclosing(events):
        async for event in events:
            if event.get("digest") == layer and event["completed"] >= 100_000:
                break  # as a client that hangs up: the pull is cancelled
    kept = sum(partial_progress(store).values())  # the cancelled pull's last checkpoint
    assert 100_000 <= kept < total_size(model) and store.list() == []
    registry.reset_counters()
    await puller(store, registry).pull("tiny")
    assert store.verify() == [] and registry.bytes_served == total_size(model) - kept
