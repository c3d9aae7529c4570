"""A bare transfer peer in a process of its own: a store, the blob service, a `Fetcher`,
its holder records under a lease of its own. ``ollamamax bench sync`` runs one per node and
the transfer tests kill them; a real node runs the same pieces inside ``ollamamax node``.

    python -m ollamamax.sync.peer --store DIR --etcd URL --node-id ID --ready-file F
        [--prefix P] [--token T] [--upload-mbps U] [--download-mbps D] [--chunk-size C]
        [--max-sources K] [--ttl S] [--fetch sha256:<hex>:SIZE]

It serves on 127.0.0.1 (a free port), announces every blob of its store, writes
``{"url", "pid"}`` to the ready file, and with ``--fetch`` fetches that blob at once (then
writes ``{"seconds"}`` to ``<ready file>.done``). It stops on SIGTERM or SIGINT. Besides the
blob routes (cluster token required, as everywhere):

    POST /peer/fetch  {"digest", "size", "announce": true}  -> {"seconds"} once in the store
    GET  /peer/stats  -> {"sent", "received", "per_peer", "rates"} (bytes, bytes/s)
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import msgspec
from aiohttp import web

from ollamamax import server
from ollamamax.api.errors import error_middleware
from ollamamax.api.http import json_response, read_body
from ollamamax.cluster.etcd import EtcdStore
from ollamamax.cluster.lease import LeaseKeeper
from ollamamax.config import SyncConfig
from ollamamax.errors import BadRequest
from ollamamax.models.store import ModelStore
from ollamamax.security.cluster import require_cluster_token
from ollamamax.sync import blobs, chunks
from ollamamax.sync.transfer import Fetcher

log = logging.getLogger(__name__)


class FetchOrder(msgspec.Struct, frozen=True):
    digest: str
    size: int
    announce: bool = True


class Peer:
    def __init__(self, store: ModelStore, kv: EtcdStore, node_id: str, token: str,
                 config: SyncConfig, prefix: str, ttl: int) -> None:
        self.store, self.kv, self.node_id, self.token = store, kv, node_id, token
        self.config, self.prefix = config, prefix
        self.keeper = LeaseKeeper(kv, ttl)
        self.partials: dict[str, chunks.PartialFile] = {}
        self.service: blobs.BlobService | None = None
        self.fetcher: Fetcher | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[error_middleware])
        self.service = blobs.add_routes(app, self.store, self.token,
                                        chunk_size=self.config.chunk_size,
                                        upload_mbps=self.config.upload_mbps,
                                        partials=self.partials)
        app.router.add_post("/peer/fetch", self.fetch)
        app.router.add_get("/peer/stats", self.stats)
        return app

    async def start(self, url: str) -> Fetcher:
        await self.keeper.start()
        self.fetcher = Fetcher(self.store, self.kv, self.node_id, url, self.token, self.config,
                               lease=lambda: self.keeper.lease, prefix=self.prefix,
                               partials=self.partials)
        await self.fetcher.announce_all()
        return self.fetcher

    async def fetch(self, request: web.Request) -> web.Response:
        require_cluster_token(request, self.token)
        try:
            order = msgspec.json.decode(await read_body(request, 1 << 16), type=FetchOrder)
        except msgspec.DecodeError as exc:
            raise BadRequest(f"a fetch order is {{digest, size}}: {exc}") from None
        assert self.fetcher is not None
        started = time.perf_counter()
        await self.fetcher.fetch(order.digest, order.size, announce=order.announce)
        return json_response({"seconds": time.perf_counter() - started})

    async def stats(self, request: web.Request) -> web.Response:
        require_cluster_token(request, self.token)
        received = dict(self.fetcher.received) if self.fetcher else {}
        return json_response({
            "sent": self.service.sent_bytes if self.service else 0,
            "received": sum(received.values()), "per_peer": received,
            "rates": self.fetcher.rates() if self.fetcher else {}})

    async def stop(self) -> None:
        if self.fetcher is not None:
            await self.fetcher.close()
        await self.keeper.stop(revoke=True)


async def main(args: argparse.Namespace) -> None:
    config = SyncConfig(chunk_size=args.chunk_size, upload_mbps=args.upload_mbps,
                        download_mbps=args.download_mbps, max_sources=args.max_sources)
    kv = EtcdStore(args.etcd)
    peer = Peer(ModelStore(args.store), kv, args.node_id, args.token, config, args.prefix,
                args.ttl)
    runner, url = await server.start_site(peer.app(), "127.0.0.1:0", shutdown_timeout=1.0)
    try:
        fetcher = await peer.start(url)
        server.announce(args.ready_file, url=url)
        if args.fetch:
            digest, _, size = args.fetch.rpartition(":")
            started = time.perf_counter()
            await fetcher.fetch(digest, int(size))
            server.announce(args.ready_file + ".done", seconds=time.perf_counter() - started)
        await server.wait_for_stop_signal()
    finally:
        await peer.stop()
        await runner.cleanup()
        await kv.close()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ollamamax.sync.peer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--etcd", required=True, help="etcd client URLs, comma-separated")
    p.add_argument("--node-id", required=True)
    p.add_argument("--ready-file", required=True)
    p.add_argument("--prefix", default="ollamamax/")
    p.add_argument("--token", default="")
    p.add_argument("--upload-mbps", type=float, default=0.0)
    p.add_argument("--download-mbps", type=float, default=0.0)
    p.add_argument("--chunk-size", type=int, default=SyncConfig().chunk_size)
    p.add_argument("--max-sources", type=int, default=SyncConfig().max_sources)
    p.add_argument("--ttl", type=int, default=2, help="lease TTL in seconds")
    p.add_argument("--fetch", default="", help="sha256:<hex>:SIZE to fetch at start")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("ollamamax.sync").setLevel(arguments.log_level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server.run(main(arguments))
