"""Which manifest digest each model has in the cluster, from node telemetry (pure).

Nodes report their models with digests in ``GET /telemetry`` (and ``/api/tags``); the gateway
applies those documents to its view through health checks or, in cluster mode, the etcd watch
(`cluster.view_sync.apply_telemetry` keeps the last document of node ``i`` in
``view.info[i]``). `refresh` reads them after each such change: nodes whose document is the
same object as last time cost one identity check, a new one listing the same models one list
comparison.

A model is cacheable only while every node that has it reports the same digest: during a
rollout (some nodes on the old version, some on the new) the answer depends on the node, so
`get` says None and nothing is cached. A digest a model had and no longer has on any node is
returned by `refresh`: its entries must be dropped everywhere. A model that leaves every node
is remembered, so if it comes back under another digest the old one is still dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ollamamax.models.names import try_key


class ModelDigests:
    def __init__(self) -> None:
        self.current: dict[str, str] = {}  # model key -> the one digest all its nodes report
        self._docs: dict[str, object] = {}  # node id -> the telemetry document last read
        self._raw: dict[str, object] = {}  # node id -> its document's "models", as read
        self._by_node: dict[str, dict[str, str]] = {}  # node id -> {model key: digest}
        self._known: dict[str, frozenset[str]] = {}  # model key -> digests last reported

    def get(self, model: str) -> str | None:
        return self.current.get(model)

    def refresh(self, ids: Sequence[str], docs: Sequence[dict[str, Any]],
                present: Sequence[int]) -> list[str]:
        """Read node telemetry (`ids[i]`, `docs[i]` for each `i` in `present`); returns the
        digests that were replaced (each to be invalidated once)."""
        changed = False
        seen = set()
        for i in present:
            node_id, doc = ids[i], docs[i]
            seen.add(node_id)
            if self._docs.get(node_id) is doc:
                continue
            self._docs[node_id] = doc
            raw = doc.get("models") if isinstance(doc, dict) else None
            if raw is not None and raw == self._raw.get(node_id):
                continue  # a new document, the same models (compared in C, not parsed)
            self._raw[node_id] = raw
            models = node_models(doc)
            if models is not None and models != self._by_node.get(node_id):
                self._by_node[node_id] = models
                changed = True
        for node_id in set(self._docs) - seen:  # left the view
            del self._docs[node_id]
            self._raw.pop(node_id, None)
            changed = self._by_node.pop(node_id, None) is not None or changed
        return self._merge() if changed else []

    def _merge(self) -> list[str]:
        reported: dict[str, set[str]] = {}
        for models in self._by_node.values():
            for key, digest in models.items():
                reported.setdefault(key, set()).add(digest)
        replaced: list[str] = []
        for key, digests in reported.items():
            before = self._known.get(key, frozenset())
            replaced.extend(sorted(d for d in before - digests if d))
            self._known[key] = frozenset(digests)
        self.current = {key: next(iter(d)) for key, d in reported.items()
                        if len(d) == 1 and "" not in d}
        return replaced


def node_models(doc: dict[str, Any]) -> dict[str, str] | None:
    """{model key: digest} from a telemetry document (None if it does not list models)."""
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, list):
        return None
    out: dict[str, str] = {}
    for m in models:
        if isinstance(m, dict) and (key := try_key(str(m.get("name") or m.get("model") or ""))):
            out[key] = str(m.get("digest") or "")
    return out
