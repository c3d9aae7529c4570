"""Real etcd processes for tests: `LocalEtcd` lives in product code
(``ollamamax.cluster.local_etcd``, which ``ollamamax up --cluster`` uses too); see its
docstring. This module keeps the name tests import it by."""

from ollamamax.cluster.local_etcd import (
    ETCD_BINARY,
    RAFT_ARGS,
    EtcdTLS,
    LocalEtcd,
    Member,
    missing_reason,
)

__all__ = ["ETCD_BINARY", "RAFT_ARGS", "EtcdTLS", "LocalEtcd", "Member", "missing_reason"]
