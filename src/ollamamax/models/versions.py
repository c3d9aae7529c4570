"""Which models differ between nodes, which are conflicts, and which copy wins.

The input is a cluster's model catalogue: for every node, ``{model name: Version(modified,
digest)}`` (the manifest's sha256 and its modification time, as `/api/tags` shows them).
For every model not held identically by every node, `diff()` says

- `current`: nodes holding the winning copy, `stale`: nodes holding another digest (a
  *conflict*: two different models under one name), `missing`: nodes without it;
- the winner: the newest modification time, a tie going to the lexicographically greatest
  digest (`Version` orders exactly so), so every node and every run picks the same copy.

Model sync (a later issue) copies the winner to the stale and, where its policy wants
replicas, the missing nodes. Three implementations behind one interface, chosen by name
(flag ``models.versions``), property-tested to give identical answers:

- ``linear``: the optimisation catalogue's "before": per node a list of entries searched
  linearly, every model compared across every pair of nodes, the newest found by a linear
  scan. O(N^2 M + N M U) for N nodes, M models each, U distinct names.
- ``indexed`` (default): one hash index ``model -> {node: version}`` built in one pass;
  O(N M) to build, O(N) per differing model. The fastest here, measured (docs/benchmarks.md).
- ``merkle``: the catalogue's "after": a character trie of model names as the version index,
  a two-level hash tree per node (64 buckets of XOR-combined 64-bit leaf hashes, then a root)
  so buckets equal on every node are skipped without reading their models, and a Bloom filter
  per node that answers "definitely not here" before the index is asked. A one-shot diff must
  read every entry anyway, so this can only win for repeated diffs after few `update`s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """One copy of a model; ordering is the resolution rule (newest, then greatest digest)."""

    modified: float  # seconds since the epoch
    digest: str  # the manifest's sha256


Catalog = Mapping[str, Mapping[str, Version]]  # node -> model -> version


@dataclass(frozen=True, slots=True)
class ModelDiff:
    model: str
    winner: Version
    current: tuple[str, ...]  # nodes holding the winner's digest, sorted
    stale: tuple[str, ...]  # nodes holding another digest, sorted
    missing: tuple[str, ...]  # nodes without the model, sorted

    @property
    def conflict(self) -> bool:
        """Two nodes hold different models under this name."""
        return bool(self.stale)


class VersionIndex(Protocol):
    def version(self, node: str, model: str) -> Version | None:
        """The copy `node` holds of `model`, if any."""

    def update(self, node: str, model: str, version: Version | None) -> None:
        """`node` now holds `version` of `model` (None: it deleted it)."""

    def diff(self) -> dict[str, ModelDiff]:
        """Every model some node does not hold as the winner, by name, in name order."""


def _model_diff(model: str, copies: Mapping[str, Version], nodes: Iterable[str]) -> ModelDiff:
    winner = max(copies.values())
    current, stale, missing = [], [], []
    for node in nodes:
        v = copies.get(node)
        (missing if v is None else current if v.digest == winner.digest else stale).append(node)
    return ModelDiff(model, winner, tuple(current), tuple(stale), tuple(missing))


# -- the catalogue's "before" ----------------------------------------------------------------


class LinearVersions:
    def __init__(self, catalog: Catalog) -> None:
        self.nodes = sorted(catalog)
        self.entries: dict[str, list[tuple[str, Version]]] = {
            node: list(catalog[node].items()) for node in self.nodes}

    def version(self, node: str, model: str) -> Version | None:
        for name, v in self.entries.get(node, ()):
            if name == model:
                return v
        return None

    def update(self, node: str, model: str, version: Version | None) -> None:
        if node not in self.entries:
            self.entries[node] = []
            self.nodes = sorted(self.entries)
        entries = self.entries[node]
        for k, (name, _) in enumerate(entries):
            if name == model:
                del entries[k]
                break
        if version is not None:
            entries.append((model, version))

    def diff(self) -> dict[str, ModelDiff]:
        names: list[str] = []
        for node in self.nodes:
            for name, _ in self.entries[node]:
                if name not in names:  # a linear search per entry
                    names.append(name)
        out = {}
        for model in sorted(names):
            held = [(node, self.version(node, model)) for node in self.nodes]
            if self._differs(held):
                copies = {node: v for node, v in held if v is not None}
                out[model] = _model_diff(model, copies, self.nodes)
        return out

    @staticmethod
    def _differs(held: list[tuple[str, Version | None]]) -> bool:
        """Compare every pair of nodes' copies (no early exit: the catalogue's scan)."""
        differs = False
        for a in range(len(held)):
            for b in range(a + 1, len(held)):
                va, vb = held[a][1], held[b][1]
                if (va is None) != (vb is None) or (
                        va is not None and vb is not None and va.digest != vb.digest):
                    differs = True
        return differs


# -- a hash index ----------------------------------------------------------------------------


class IndexedVersions:
    def __init__(self, catalog: Catalog) -> None:
        self.nodes = sorted(catalog)
        self.by_node: dict[str, dict[str, Version]] = {n: dict(catalog[n]) for n in self.nodes}
        self.by_model: dict[str, dict[str, Version]] = {}
        for node in self.nodes:
            for model, v in catalog[node].items():
                self.by_model.setdefault(model, {})[node] = v

    def version(self, node: str, model: str) -> Version | None:
        return self.by_node.get(node, {}).get(model)

    def update(self, node: str, model: str, version: Version | None) -> None:
        if node not in self.by_node:
            self.by_node[node] = {}
            self.nodes = sorted(self.by_node)
        copies = self.by_model.setdefault(model, {})
        if version is None:
            self.by_node[node].pop(model, None)
            copies.pop(node, None)
            if not copies:
                del self.by_model[model]
        else:
            self.by_node[node][model] = copies[node] = version

    def diff(self) -> dict[str, ModelDiff]:
        n = len(self.nodes)
        out = {}
        for model in sorted(self.by_model):
            copies = self.by_model[model]
            if len(copies) == n and len({v.digest for v in copies.values()}) == 1:
                continue
            out[model] = _model_diff(model, copies, self.nodes)
        return out


# -- trie + Bloom filter + hash tree ---------------------------------------------------------

BUCKETS = 64
_END = ""  # the trie key under which a name's copies live (no name character is "")


def _leaf(model: str, digest: str) -> int:
    """A 64-bit hash of one (model, digest), the same in every process."""
    h = hashlib.blake2b(model.encode() + b"\0" + digest.encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


def _bucket(model: str) -> int:
    return hashlib.blake2b(model.encode(), digest_size=2).digest()[0] % BUCKETS


class VersionTrie:
    """Model names in a character trie; each name holds ``{node: Version}``."""

    def __init__(self) -> None:
        self.root: dict[str, dict] = {}

    def copies(self, model: str, create: bool = False) -> dict[str, Version] | None:
        node = self.root
        for ch in model:
            child = node.get(ch)
            if child is None:
                if not create:
                    return None
                child = node[ch] = {}
            node = child
        found = node.get(_END)
        if found is None and create:
            found = node[_END] = {}
        return found

    def with_prefix(self, prefix: str) -> Iterator[tuple[str, dict[str, Version]]]:
        """Every name starting with `prefix` (e.g. every tag of ``"llama3:"``), sorted."""
        node = self.root
        for ch in prefix:
            node = node.get(ch)  # type: ignore[assignment]
            if node is None:
                return
        stack = [(prefix, node)]
        while stack:
            name, at = stack.pop()
            for ch in sorted(at, reverse=True):
                if ch == _END:
                    continue
                stack.append((name + ch, at[ch]))
            if at.get(_END):
                yield name, at[_END]


class BloomFilter:
    """Membership with no false negatives: `might_hold` False means "certainly not"."""

    def __init__(self, expected: int, bits_per_item: int = 10) -> None:
        self.size = max(64, expected * bits_per_item)
        self.bits = bytearray((self.size + 7) // 8)

    def _positions(self, item: str) -> Iterator[int]:
        h = hashlib.blake2b(item.encode(), digest_size=16).digest()
        a, b = int.from_bytes(h[:8], "little"), int.from_bytes(h[8:], "little") | 1
        for k in range(4):  # double hashing, k = 4 (~1% false positives at 10 bits an item)
            yield (a + k * b) % self.size

    def add(self, item: str) -> None:
        for p in self._positions(item):
            self.bits[p >> 3] |= 1 << (p & 7)

    def might_hold(self, item: str) -> bool:
        return all(self.bits[p >> 3] >> (p & 7) & 1 for p in self._positions(item))


class MerkleVersions:
    def __init__(self, catalog: Catalog) -> None:
        self.nodes = sorted(catalog)
        self.trie = VersionTrie()
        self.bucket_models: list[set[str]] = [set() for _ in range(BUCKETS)]
        self.buckets: dict[str, list[int]] = {}
        self.blooms: dict[str, BloomFilter] = {}
        self._dirty_blooms: set[str] = set()
        for node in self.nodes:
            models = catalog[node]
            self.buckets[node] = [0] * BUCKETS
            self.blooms[node] = bloom = BloomFilter(len(models))
            for model, v in models.items():
                self._insert(node, model, v)
                bloom.add(model)

    def _insert(self, node: str, model: str, v: Version) -> None:
        copies = self.trie.copies(model, create=True)
        assert copies is not None
        copies[node] = v
        b = _bucket(model)
        self.bucket_models[b].add(model)
        self.buckets[node][b] ^= _leaf(model, v.digest)

    def root(self, node: str) -> bytes:
        """The node's root hash: equal roots mean equal catalogues (but for 2^-64 odds)."""
        data = b"".join(h.to_bytes(8, "little") for h in self.buckets[node])
        return hashlib.blake2b(data, digest_size=16).digest()

    def version(self, node: str, model: str) -> Version | None:
        copies = self.trie.copies(model)
        return None if copies is None else copies.get(node)

    def update(self, node: str, model: str, version: Version | None) -> None:
        if node not in self.buckets:
            self.buckets[node] = [0] * BUCKETS
            self.blooms[node] = BloomFilter(16)
            self.nodes = sorted(self.buckets)
        copies = self.trie.copies(model, create=True)
        assert copies is not None
        old = copies.pop(node, None)
        b = _bucket(model)
        if old is not None:
            self.buckets[node][b] ^= _leaf(model, old.digest)
            self._dirty_blooms.add(node)  # a Bloom filter cannot forget: rebuilt before use
        if version is not None:
            self._insert(node, model, version)
            self.blooms[node].add(model)

    def diff(self) -> dict[str, ModelDiff]:
        self._rebuild_blooms()
        nodes = self.nodes
        if len({self.root(n) for n in nodes}) <= 1:
            return {}  # every node holds the same catalogue
        out = {}
        for b in range(BUCKETS):
            if len({self.buckets[n][b] for n in nodes}) <= 1:
                continue  # the same models, the same digests, on every node
            for model in self.bucket_models[b]:
                found = self._model(model)
                if found is not None:
                    out[model] = found
        return dict(sorted(out.items()))

    def _model(self, model: str) -> ModelDiff | None:
        copies = self.trie.copies(model) or {}
        if not copies:
            return None
        holders = {node: copies[node] for node in self.nodes
                   if self.blooms[node].might_hold(model) and node in copies}
        if len(holders) == len(self.nodes) and len({v.digest for v in holders.values()}) == 1:
            return None
        return _model_diff(model, holders, self.nodes)

    def _rebuild_blooms(self) -> None:
        for node in self._dirty_blooms:
            held = [model for b in range(BUCKETS) for model in self.bucket_models[b]
                    if node in (self.trie.copies(model) or {})]
            bloom = self.blooms[node] = BloomFilter(len(held))
            for model in held:
                bloom.add(model)
        self._dirty_blooms.clear()


VERSIONS = {
    "linear": "ollamamax.models.versions:LinearVersions",
    "indexed": "ollamamax.models.versions:IndexedVersions",
    "merkle": "ollamamax.models.versions:MerkleVersions",
}
