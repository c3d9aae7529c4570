"""Desired state of model placement in the cluster store, and where sync keeps its keys.

Under the cluster prefix (``ollamamax/`` by default); ``<model>`` is the canonical model key
(``ollamamax.models.names``) quoted with ``urllib.parse.quote(key, safe="")`` so a name with
"/" stays one path segment and prefix queries stay exact:

    sync/desired/<model>              `Desired`: replicas, pinned nodes, labels, policy, digest
    sync/versions/<model>/<node>      a node's version record (``sync/resolve.py``), under its lease
    sync/assign/<node>/<model>        the planner's order: fetch this manifest's blobs, install it
    sync/progress/<node>/<digest>     a transfer's progress (``sync/transfer.py``)

Desired records are written by ``ollamamax models replicate/pin`` and read by the planner; a
change merges into the record already there with a compare-and-swap, so ``replicate`` keeps
the pins and ``pin`` keeps the replica count.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

import msgspec

from ollamamax.cluster.records import DEFAULT_PREFIX
from ollamamax.cluster.store import Store
from ollamamax.errors import BadRequest
from ollamamax.models import names
from ollamamax.models.store import check_digest
from ollamamax.sync.resolve import POLICIES


class Desired(msgspec.Struct, frozen=True, kw_only=True):
    """Where a model should be. ``replicas`` 0: as many as pinned `nodes` (or the ``[sync]
    replicas`` default); `nodes` and `labels` restrict which nodes may hold it (a label
    ``k=v`` must be among the node's labels)."""

    replicas: int = 0
    nodes: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    policy: str = "newest"
    digest: str = ""  # the pinned digest ("sha256:<hex>") of policy "pinned"

    def checked(self) -> Desired:
        """Self, or `BadRequest` with a sentence saying what is wrong."""
        if self.replicas < 0:
            raise BadRequest("replicas must be >= 0")
        if self.policy not in POLICIES:
            raise BadRequest(f"unknown policy {self.policy!r}: use one of {', '.join(POLICIES)}")
        if self.digest:
            check_digest(self.digest)
            if not self.digest.startswith("sha256:"):
                raise BadRequest(f"a digest looks like sha256:<64 hex>, not {self.digest!r}")
        if self.policy == "pinned" and not self.digest:
            raise BadRequest("policy 'pinned' needs a digest (--digest sha256:...)")
        if any(not n for n in self.nodes) or any(not label for label in self.labels):
            raise BadRequest("node ids and labels must not be empty")
        return self

    def wanted(self, default_replicas: int) -> int:
        """How many nodes should hold the model."""
        if self.replicas:
            return self.replicas
        return len(self.nodes) if self.nodes else default_replicas


_desired_decoder = msgspec.json.Decoder(Desired)


def decode_desired(value: bytes) -> Desired:
    return _desired_decoder.decode(value)


def quote(model: str) -> str:
    return urllib.parse.quote(model, safe="")


@dataclass(frozen=True, slots=True)
class SyncKeys:
    """The sync keys under a cluster prefix; see the module docstring."""

    prefix: str = DEFAULT_PREFIX

    @property
    def desired_prefix(self) -> str:
        return f"{self.prefix}sync/desired/"

    @property
    def versions_prefix(self) -> str:
        return f"{self.prefix}sync/versions/"

    @property
    def assign_prefix(self) -> str:
        return f"{self.prefix}sync/assign/"

    @property
    def progress_prefix(self) -> str:
        return f"{self.prefix}sync/progress/"

    def desired(self, model: str) -> str:
        return self.desired_prefix + quote(model)

    def version(self, model: str, node: str) -> str:
        return f"{self.versions_prefix}{quote(model)}/{node}"

    def assign(self, node: str, model: str) -> str:
        return f"{self.assign_prefix}{node}/{quote(model)}"

    def node_assignments(self, node: str) -> str:
        return f"{self.assign_prefix}{node}/"

    def split(self, key: str, prefix: str) -> tuple[str, str] | None:
        """``(first, second)`` of ``<prefix><first>/<second>`` unquoting a model segment:
        versions give (model, node), assignments (node, model), progress (node, digest)."""
        if not key.startswith(prefix):
            return None
        first, sep, second = key[len(prefix):].partition("/")
        if not sep or not first or not second:
            return None
        return urllib.parse.unquote(first), urllib.parse.unquote(second)


# -- reading and writing (the CLI's and the planner's thin shell) ---------------------------


async def read_all(kv: Store, keys: SyncKeys) -> dict[str, Desired]:
    """Every desired record by model key; records that do not decode are skipped."""
    kvs, _ = await kv.get_prefix(keys.desired_prefix)
    out = {}
    for item in kvs:
        try:
            out[urllib.parse.unquote(item.key[len(keys.desired_prefix):])] = \
                decode_desired(item.value).checked()
        except (msgspec.DecodeError, BadRequest):
            continue
    return out


async def update(kv: Store, keys: SyncKeys, name: str, **changes: Any) -> tuple[str, Desired]:
    """Merge `changes` into the desired record of model `name` (created if absent), atomically;
    returns the model key and the record written. `BadRequest` for a bad name or value."""
    model = names.model_key(name)
    key = keys.desired(model)
    while True:
        current = await kv.get(key)
        base = decode_desired(current.value) if current is not None else Desired()
        desired = msgspec.structs.replace(base, **changes).checked()
        if await kv.compare_and_swap(key, current.mod_revision if current else 0,
                                     msgspec.json.encode(desired)):
            return model, desired


async def remove(kv: Store, keys: SyncKeys, name: str) -> bool:
    return await kv.delete(keys.desired(names.model_key(name)))
