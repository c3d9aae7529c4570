"""The blob service over real sockets: cluster members only, names checked before any file is
touched, single ranges (206/416), a node still downloading serving its verified chunks, paced
uploads, and the routes on a real node agent."""

from __future__ import annotations

import contextlib
import hashlib
import os

import aiohttp
import msgspec
import pytest
from aiohttp import web
from yarl import URL

from ollamamax.api.errors import error_middleware
from ollamamax.config import NodeConfig, SecurityConfig, SyncConfig
from ollamamax.models.store import ModelStore
from ollamamax.node import engines
from ollamamax.node.agent import NodeAgent
from ollamamax.security.cluster import cluster_headers
from ollamamax.sync import blobs, chunks

TOKEN = "s3cret"
SIZE = 300_000
CHUNK = 64 << 10


@contextlib.asynccontextmanager
async def serving(app: web.Application):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def node(tmp_path):
    """A blob service over a store holding one blob, and a secret file beside the store."""
    store = ModelStore(tmp_path / "models")
    data = os.urandom(SIZE)
    digest, _ = store.write_blob_bytes(data)
    (tmp_path / "secret").write_text("do not serve me")
    app = web.Application(middlewares=[error_middleware])
    partials: dict[str, chunks.PartialFile] = {}
    service = blobs.add_routes(app, store, TOKEN, chunk_size=CHUNK, partials=partials)
    async with serving(app) as url, aiohttp.ClientSession(headers=cluster_headers(TOKEN)) as http:
        yield type("Node", (), {"url": url, "digest": digest, "data": data, "store": store,
                                "http": http, "service": service, "partials": partials})


async def test_an_outsider_without_the_cluster_token_gets_401(node) -> None:
    async with aiohttp.ClientSession() as outsider:
        for path in (f"/cluster/blobs/{node.digest}", f"/cluster/blobs/{node.digest}/chunks"):
            for headers in ({}, cluster_headers("wrong")):
                async with outsider.get(node.url + path, headers=headers) as reply:
                    assert reply.status == 401
                    assert "cluster token" in (await reply.json())["error"]
    assert node.service.sent_bytes == 0


@pytest.mark.parametrize("path", [
    "/cluster/blobs/..%2F..%2Fsecret",
    "/cluster/blobs/sha256:..%2F..%2F..%2Fsecret",
    "/cluster/blobs/sha256:../../secret",
    "/cluster/blobs/%2Fetc%2Fpasswd",
    "/cluster/blobs/sha256:" + "0" * 63 + "%2F",
    "/cluster/blobs/sha256:..%2F..%2Fsecret/chunks",
])
async def test_a_path_traversal_is_refused_before_any_file_is_read(node, path) -> None:
    async with node.http.get(URL(node.url + path, encoded=True)) as reply:
        body = await reply.read()
        assert 400 <= reply.status < 500
        assert b"do not serve me" not in body and b"root:" not in body
        assert "error" in (await reply.json())
    assert node.service.sent_bytes == 0


async def test_a_blob_this_node_does_not_hold_is_404(node) -> None:
    async with node.http.get(f"{node.url}/cluster/blobs/sha256:{'a' * 64}") as reply:
        assert reply.status == 404


async def test_ranges_are_served_with_206_and_the_whole_blob_with_200(node) -> None:
    url = f"{node.url}/cluster/blobs/{node.digest}"
    async with node.http.get(url, headers={"Range": "bytes=1000-70999"}) as reply:
        assert reply.status == 206
        assert reply.headers["Content-Range"] == f"bytes 1000-70999/{SIZE}"
        assert await reply.read() == node.data[1000:71000]
    async with node.http.get(url) as reply:
        assert reply.status == 200 and await reply.read() == node.data
    async with node.http.get(url, headers={"Range": f"bytes={SIZE}-"}) as reply:
        assert reply.status == 416
    assert node.service.sent_bytes == 70_000 + SIZE


async def test_the_chunk_list_says_what_the_node_has(node) -> None:
    async with node.http.get(f"{node.url}/cluster/blobs/{node.digest}/chunks") as reply:
        doc = await reply.json()
    listed = chunks.decode(msgspec.json.encode({k: doc[k] for k in ("size", "chunk_size",
                                                                    "hashes", "root")}))
    assert listed.size == SIZE and listed.chunk_size == CHUNK and listed.count == 5
    assert list(chunks.decode_have(doc["have"], listed.count)) == [1] * 5
    async with node.http.get(f"{node.url}/cluster/blobs/{node.digest}/chunks",
                             params={"chunk_size": "abc"}) as reply:
        assert reply.status == 400


async def test_a_node_still_downloading_serves_only_its_verified_chunks(node, tmp_path) -> None:
    other = ModelStore(tmp_path / "other")
    digest = f"sha256:{'b' * 64}"  # not in the store: only the partial file can answer
    data = os.urandom(3 * CHUNK)
    listed = chunks.make([hashlib.sha256(data[i:i + CHUNK]).hexdigest()
                          for i in range(0, len(data), CHUNK)], len(data), CHUNK)
    partial = chunks.PartialFile(other, digest, listed)
    partial.open()
    partial.write(0, data[:CHUNK])
    partial.write(2, data[2 * CHUNK:])
    node.partials[partial.hex] = partial
    url = f"{node.url}/cluster/blobs/{digest}"
    try:
        async with node.http.get(url, headers={"Range": f"bytes=10-{CHUNK - 1}"}) as reply:
            assert reply.status == 206 and await reply.read() == data[10:CHUNK]
        async with node.http.get(url, headers={"Range": f"bytes={CHUNK}-{CHUNK + 9}"}) as reply:
            assert reply.status == 416
        async with node.http.get(url) as reply:  # the whole: not all here
            assert reply.status == 416
        async with node.http.get(url + "/chunks", params={"fields": "have"}) as reply:
            doc = await reply.json()
        assert "hashes" not in doc
        assert list(chunks.decode_have(doc["have"], 3)) == [1, 0, 1]
    finally:
        partial.close()


async def test_paced_uploads_send_the_same_bytes(tmp_path) -> None:
    store = ModelStore(tmp_path / "paced")
    data = os.urandom(SIZE)
    digest, _ = store.write_blob_bytes(data)
    app = web.Application()
    service = blobs.add_routes(app, store, TOKEN, upload_mbps=100.0)
    assert service.upload is not None
    async with (serving(app) as url,
                aiohttp.ClientSession(headers=cluster_headers(TOKEN)) as http,
                http.get(f"{url}/cluster/blobs/{digest}",
                         headers={"Range": "bytes=5-200004"}) as reply):
        assert reply.status == 206 and await reply.read() == data[5:200005]
    assert service.sent_bytes == 200_000


async def test_a_node_agent_serves_its_store_to_cluster_members_only(tmp_path) -> None:
    conf = NodeConfig(engine="sim", models_dir=str(tmp_path / "node-models"))
    store = ModelStore(conf.models_dir)
    digest, _ = store.write_blob_bytes(b"weights" * 1000)
    agent = NodeAgent(conf, engines.create(conf), SecurityConfig(cluster_token=TOKEN),
                      sync=SyncConfig(chunk_size=4096))
    async with serving(agent.app()) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/cluster/blobs/{digest}") as reply:
            assert reply.status == 401
        async with http.get(f"{url}/cluster/blobs/{digest}/chunks",
                            headers=cluster_headers(TOKEN)) as reply:
            assert reply.status == 200 and (await reply.json())["chunk_size"] == 4096
        async with http.get(f"{url}/cluster/blobs/{digest}",
                            headers=cluster_headers(TOKEN)) as reply:
            assert await reply.read() == b"weights" * 1000


async def test_a_busy_holder_declines_a_chunk_it_just_sent_unless_asked_to_insist(tmp_path) -> None:
    store = ModelStore(tmp_path / "origin")
    data = os.urandom(SIZE)
    digest, _ = store.write_blob_bytes(data)
    app = web.Application()
    service = blobs.add_routes(app, store, TOKEN, upload_mbps=1.0)
    service.upload = blobs.Pacer(400_000, burst=10_000)  # the slow range takes ~0.5 s
    url_of = f"/cluster/blobs/{digest}"
    chunk = {"Range": "bytes=0-99999"}
    async with serving(app) as url, aiohttp.ClientSession(headers=cluster_headers(TOKEN)) as http:
        async with http.get(url + url_of, headers=chunk) as reply:  # idle: served
            assert reply.status == 206 and await reply.read() == data[:100_000]
        async with http.get(url + url_of, headers={"Range": "bytes=100000-"}) as slow:
            assert slow.status == 206  # still sending: the holder is busy now
            async with http.get(url + url_of, headers=chunk) as again:
                assert again.status == 409
                assert again.headers[blobs.HAVE_HEADER] == "all"
                assert again.headers[blobs.SENDING_HEADER] == f"100000-{SIZE}"
            async with http.get(url + url_of, headers={**chunk, blobs.INSIST_HEADER: "1"}) as again:
                assert again.status == 206 and await again.read() == data[:100_000]
            assert await slow.read() == data[100_000:]
    assert service.sent_bytes == 2 * 100_000 + SIZE - 100_000
