"""Cluster coordination: a store (`store.Store`) chosen by name, leases and elections on it.

``embedded`` keeps the state in this process (one gateway, nothing to start); ``etcd`` puts it
in an etcd 3.4 cluster, so several gateways and the nodes share it. See docs/cluster.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ollamamax import registry

if TYPE_CHECKING:
    from ollamamax.cluster.store import Store

STORES = {
    "embedded": "ollamamax.cluster.embedded:EmbeddedStore",
    "etcd": "ollamamax.cluster.etcd:EtcdStore",
}


def open_store(name: str, **options: Any) -> Store:
    """The store registered as `name`, built with `options` (e.g. ``endpoints=`` for etcd)."""
    store: Store = registry.load("store", STORES, name)(**options)
    return store
