"""Who holds which blob, in etcd: the records transfers find their sources in.

Under the cluster prefix (``ollamamax/`` by default):

    sync/holders/<digest>/<node_id>   {"url", "complete"}: under the holder's lease, so a node
                                      that dies stops being a source when its lease expires
    sync/chunks/<digest>              the blob's chunk list, written once (create-only) by the
                                      first node that announces the complete blob
    sync/progress/<node_id>/<digest>  {"done", "total"} bytes of a transfer under way, at most
                                      every PROGRESS_EVERY_S, under the receiver's lease

A node announces a blob it is still downloading (``complete: false``) so others can fetch the
chunks it has (their ``/chunks`` bitmap says which): a model spreads like a swarm. The lease
is read through a function each time, so records follow the node's membership lease when it
is granted again; `republish` puts them all back under the new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from ollamamax.cluster.store import Store
from ollamamax.errors import StoreError
from ollamamax.models.store import check_digest
from ollamamax.sync import chunks

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5


class HolderRecord(msgspec.Struct, frozen=True):
    url: str
    complete: bool = False


class Progress(msgspec.Struct, frozen=True):
    done: int
    total: int


class SyncKeys:
    """The sync keys under a cluster prefix."""

    def __init__(self, prefix: str = "ollamamax/") -> None:
        if not prefix.endswith("/"):
            raise ValueError(f"a cluster prefix ends with '/': {prefix!r}")
        self.prefix = prefix

    def holders(self, digest: str) -> str:
        check_digest(digest)
        return f"{self.prefix}sync/holders/{digest}/"

    def holder(self, digest: str, node_id: str) -> str:
        if not node_id or "/" in node_id:
            raise ValueError(f"not a node id: {node_id!r}")
        return self.holders(digest) + node_id

    def chunks(self, digest: str) -> str:
        check_digest(digest)
        return f"{self.prefix}sync/chunks/{digest}"

    def progress(self, node_id: str, digest: str) -> str:
        check_digest(digest)
        return f"{self.prefix}sync/progress/{node_id}/{digest}"


def decode_holders(prefix: str, kvs: list[tuple[str, bytes]]) -> dict[str, HolderRecord]:
    """``{node_id: record}`` from the keys under a blob's holders prefix; unreadable records
    are skipped (a node of a newer version may write more)."""
    out = {}
    for key, value in kvs:
        node_id = key[len(prefix):]
        try:
            out[node_id] = msgspec.json.decode(value, type=HolderRecord)
        except msgspec.DecodeError:
            log.debug("skipping an unreadable holder record at %s", key)
    return out


class HolderBook:
    """This node's holder and progress records, and what the store says of others'."""

    def __init__(self, kv: Store, node_id: str, url: str, lease: Callable[[], int], *,
                 prefix: str = "ollamamax/") -> None:
        self.kv, self.node_id, self.url, self.lease = kv, node_id, url, lease
        self.keys = SyncKeys(prefix)
        self.mine: dict[str, bool] = {}  # digest -> complete, as last announced

    async def announce(self, digest: str, complete: bool) -> None:
        """Say this node holds `digest` (all of it, or the chunks its ``/chunks`` lists)."""
        self.mine[digest] = complete
        lease = self.lease()
        if not lease:
            return  # `republish` puts it once a lease is granted again
        record = msgspec.json.encode(HolderRecord(self.url, complete))
        await self.kv.put(self.keys.holder(digest, self.node_id), record, lease)

    async def withdraw(self, digest: str) -> None:
        self.mine.pop(digest, None)
        await self.kv.delete(self.keys.holder(digest, self.node_id))

    async def republish(self) -> int:
        """Put every record again (under a new lease); how many were written."""
        written = 0
        for digest, complete in list(self.mine.items()):
            try:
                await self.announce(digest, complete)
                written += 1
            except StoreError as exc:
                log.warning("could not announce %s again (%s)", digest, exc)
        return written

    async def holders(self, digest: str) -> dict[str, HolderRecord]:
        """Every other node holding `digest` (some of it, or all)."""
        prefix = self.keys.holders(digest)
        kvs, _ = await self.kv.get_prefix(prefix)
        found = decode_holders(prefix, [(kv.key, kv.value) for kv in kvs])
        found.pop(self.node_id, None)
        return found

    async def chunk_list(self, digest: str) -> chunks.ChunkList | None:
        """The chunk list stored under `digest`, if one is (and is well formed)."""
        kv = await self.kv.get(self.keys.chunks(digest))
        if kv is None:
            return None
        try:
            return chunks.decode(kv.value)
        except ValueError as exc:
            log.warning("ignoring the malformed chunk list of %s (%s)", digest, exc)
            return None

    async def publish_chunk_list(self, digest: str, chunk_list: chunks.ChunkList) -> bool:
        """Store the list unless one is there already (create-only); True if written."""
        return await self.kv.compare_and_swap(self.keys.chunks(digest), 0, chunk_list.encode())

    async def progress(self, digest: str, done: int, total: int) -> None:
        lease = self.lease()
        if lease:
            await self.kv.put(self.keys.progress(self.node_id, digest),
                              msgspec.json.encode(Progress(done, total)), lease)

    async def clear_progress(self, digest: str) -> None:
        await self.kv.delete(self.keys.progress(self.node_id, digest))
