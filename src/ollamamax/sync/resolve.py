"""Versions and conflicts: which copy of a model wins, and which nodes differ at all.

Every node publishes one *version record* per model it holds (``sync/versions/<model>/<node>``):
the manifest's digest and text, the node where that version first appeared (`origin`) and its
hybrid-logical-clock time (`hlc`, ``sync/hlc.py``). A copy made by sync keeps the time and
origin of the version it copies, so a replica never looks newer than its source.

`resolve` picks one digest per model by the model's policy:

- ``newest`` (default): the greatest HLC; a tie (equal times) goes to the greatest digest;
- ``pinned``: the digest an admin set in the desired state (``ollamamax models pin --digest``);
- ``majority``: the digest most nodes hold; a tie goes to the newest of the tied digests.

The answer depends only on the set of records: it never looks at their order, the clock or
the planner's identity, so every planner reaches the same answer (property-tested). A record
whose manifest does not hash to its digest is ignored.

Divergence is found cheaply with the catalogue's structures (``models/versions.py``): each
node's tag->digest map and blob set become a two-level hash tree (`Summary`: 64 buckets, one
root); nodes with equal roots are equal after one comparison, and only buckets that differ
are opened. A Bloom filter of each node's blobs answers "certainly not there" when the
planner estimates how many bytes a node still lacks.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ollamamax.models.versions import BUCKETS, BloomFilter, _bucket, _leaf
from ollamamax.sync.hlc import HLC

POLICIES = ("newest", "pinned", "majority")


class VersionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The value of ``sync/versions/<model>/<node>`` (the contract's JSON)."""

    digest: str  # "sha256:<hex>" of the manifest text
    manifest: str  # the manifest file's exact text
    origin: str  # the node where this version first appeared
    hlc: tuple[int, int, str]  # [wall_ms, logical, node]

    @property
    def time(self) -> HLC:
        return HLC(*self.hlc)

    def valid(self) -> bool:
        """The manifest text hashes to the digest (a record cannot smuggle another manifest)."""
        return self.digest == _text_digest(self.manifest)

    def layers(self) -> list[dict[str, Any]]:
        """The manifest's config and layers: every blob a node needs for this version."""
        manifest = msgspec.json.decode(self.manifest)
        return [manifest["config"], *manifest.get("layers", [])]

    def blobs(self) -> tuple[tuple[str, int], ...]:
        """``(digest, size)`` of every blob, parsed once per manifest text (a planner reads
        the same few manifests in thousands of records every pass)."""
        return _blobs(self.manifest)

    def size(self) -> int:
        return sum(size for _, size in self.blobs())


def manifest_digest(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return f"sha256:{hashlib.sha256(raw).hexdigest()}"


@functools.lru_cache(maxsize=4096)
def _text_digest(text: str) -> str:
    return manifest_digest(text)


@functools.lru_cache(maxsize=4096)
def _blobs(text: str) -> tuple[tuple[str, int], ...]:
    manifest = msgspec.json.decode(text)
    return tuple((str(layer["digest"]), int(layer.get("size", 0)))
                 for layer in [manifest["config"], *manifest.get("layers", [])])


_record_decoder = msgspec.json.Decoder(VersionRecord)


def decode_record(value: bytes) -> VersionRecord:
    return _record_decoder.decode(value)


@dataclass(frozen=True, slots=True)
class Resolution:
    """The answer for one model: the winning record and who holds what."""

    model: str
    policy: str
    winner: VersionRecord | None  # None: the policy names a digest no node holds
    holders: Mapping[str, tuple[str, ...]]  # digest -> nodes holding it, sorted
    note: str = ""

    @property
    def digest(self) -> str:
        return self.winner.digest if self.winner is not None else ""

    @property
    def current(self) -> tuple[str, ...]:
        """Nodes holding the winner."""
        return self.holders.get(self.digest, ())

    @property
    def stale(self) -> tuple[str, ...]:
        """Nodes holding another digest under this name: they are to get the winner."""
        return tuple(sorted(n for d, nodes in self.holders.items() if d != self.digest
                            for n in nodes))

    @property
    def conflict(self) -> bool:
        """Two nodes hold different manifests under this name."""
        return len(self.holders) > 1


def resolve(model: str, records: Mapping[str, VersionRecord], policy: str = "newest",
            pinned: str = "") -> Resolution:
    """The winner among `records` (node -> record) for `model` by `policy`; see the module
    docstring. `ValueError` for an unknown policy."""
    if policy not in POLICIES:
        raise ValueError(f"unknown sync policy {policy!r}: use one of {', '.join(POLICIES)}")
    valid = {node: r for node, r in records.items() if r.valid()}
    holders: dict[str, list[str]] = {}
    best: dict[str, tuple[HLC, str]] = {}  # digest -> (newest time, its node): the copy to spread
    for node, r in valid.items():
        holders.setdefault(r.digest, []).append(node)
        if r.digest not in best or (r.time, node) > best[r.digest]:
            best[r.digest] = (r.time, node)
    sorted_holders = {d: tuple(sorted(nodes)) for d, nodes in sorted(holders.items())}
    note = "" if len(valid) == len(records) else f"ignored {len(records) - len(valid)} " \
        "record(s) whose manifest does not match its digest"
    if not best:
        return Resolution(model, policy, None, sorted_holders, note or "no node holds it")
    if policy == "pinned" and pinned:
        if pinned not in best:
            return Resolution(model, policy, None, sorted_holders,
                              f"pinned digest {pinned[:19]} is on no node")
        digest = pinned
    elif policy == "majority":
        digest = max(best, key=lambda d: (len(holders[d]), best[d][0], d))
    else:  # newest; pinned without a digest falls back to it
        digest = max(best, key=lambda d: (best[d][0], d))
    return Resolution(model, policy, valid[best[digest][1]], sorted_holders, note)


# -- divergence: merkle summaries and Bloom filters ------------------------------------------

_BLOB = "\0blob\0"  # leaves of the blob set share the tree with the tags; no name starts so


@dataclass(frozen=True, slots=True)
class Summary:
    """A node's tag->digest map and blob set as a two-level hash tree, and its blob filter."""

    buckets: tuple[int, ...]
    root: bytes
    bloom: BloomFilter = field(compare=False)
    models: Mapping[str, str] = field(compare=False)  # model -> digest (to open a bucket)


def summarize(models: Mapping[str, str], blobs: Iterable[str]) -> Summary:
    """The summary of one node holding `models` (model -> manifest digest) and `blobs`."""
    buckets = [0] * BUCKETS
    blob_list = sorted(set(blobs))
    for model, digest in models.items():
        buckets[_bucket(model)] ^= _leaf(model, digest)
    for blob in blob_list:
        buckets[_bucket(_BLOB + blob)] ^= _leaf(_BLOB + blob, "")
    bloom = BloomFilter(len(blob_list))
    for blob in blob_list:
        bloom.add(blob)
    data = b"".join(h.to_bytes(8, "little") for h in buckets)
    return Summary(tuple(buckets), hashlib.blake2b(data, digest_size=16).digest(), bloom,
                   dict(models))


def divergent_models(summaries: Mapping[str, Summary]) -> set[str]:
    """Models not held with the same digest by every node, opened top-down: equal roots end
    it at once; otherwise only buckets whose hashes differ between nodes are read."""
    nodes = list(summaries.values())
    if len({s.root for s in nodes}) <= 1:
        return set()
    differing = {b for b in range(BUCKETS) if len({s.buckets[b] for s in nodes}) > 1}
    names = {m for s in nodes for m in s.models if _bucket(m) in differing}
    return {m for m in names if len({s.models.get(m) for s in nodes}) > 1}


def missing_bytes(summary: Summary | None, blobs: Iterable[tuple[str, int]]) -> int:
    """Bytes of `blobs` (digest, size) a node certainly lacks (the filter has no false
    negatives, so this never overstates; a false positive understates by one blob)."""
    if summary is None:
        return sum(size for _, size in blobs)
    return sum(size for digest, size in blobs if not summary.bloom.might_hold(digest))
