"""Which peers hold a blob (or a model): the lookup model transfer asks before every fetch.

Two implementations behind one interface, chosen by name (flag ``models.holders``):

- ``linear``: the optimisation catalogue's "before": a list of peers, each with the list of
  blobs it holds, searched peer by peer: O(P x B) per lookup.
- ``indexed`` (default): a hash index ``blob -> {peers}`` kept beside ``peer -> {blobs}``:
  O(1) to find the holders (plus sorting the few found).

The catalogue's "after" is a DHT-style routing table with O(log n) lookups. OllamaMax does not
build a DHT: where nodes must agree on who holds what, etcd decides (blob holders are keys
under each holder's lease, DESIGN.md), and this index is each process's in-memory copy of
that, answering in O(1) without any hop between peers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class LinearPeers:
    def __init__(self) -> None:
        self.peers: list[tuple[str, list[str]]] = []

    def load(self, peers: Mapping[str, Iterable[str]]) -> None:
        """Start over with every peer's blobs (a snapshot, as read from etcd)."""
        self.peers = [(peer, list(dict.fromkeys(blobs))) for peer, blobs in peers.items()]

    def set_blobs(self, peer: str, blobs: Iterable[str]) -> None:
        """`peer` holds exactly `blobs` (what it announced)."""
        self.remove_peer(peer)
        self.peers.append((peer, list(dict.fromkeys(blobs))))

    def add(self, peer: str, blob: str) -> None:
        for name, blobs in self.peers:
            if name == peer:
                if blob not in blobs:
                    blobs.append(blob)
                return
        self.peers.append((peer, [blob]))

    def remove_peer(self, peer: str) -> None:
        self.peers = [(name, blobs) for name, blobs in self.peers if name != peer]

    def holders(self, blob: str) -> tuple[str, ...]:
        """The peers holding `blob`, sorted."""
        found = []
        for name, blobs in self.peers:
            for held in blobs:
                if held == blob:
                    found.append(name)
                    break
        return tuple(sorted(found))


class IndexedPeers:
    def __init__(self) -> None:
        self.by_blob: dict[str, set[str]] = {}
        self.by_peer: dict[str, set[str]] = {}

    def load(self, peers: Mapping[str, Iterable[str]]) -> None:
        self.by_blob, self.by_peer = {}, {}
        for peer, blobs in peers.items():
            self.set_blobs(peer, blobs)

    def set_blobs(self, peer: str, blobs: Iterable[str]) -> None:
        self.remove_peer(peer)
        self.by_peer[peer] = set()
        for blob in blobs:
            self.add(peer, blob)

    def add(self, peer: str, blob: str) -> None:
        self.by_peer.setdefault(peer, set()).add(blob)
        self.by_blob.setdefault(blob, set()).add(peer)

    def remove_peer(self, peer: str) -> None:
        for blob in self.by_peer.pop(peer, ()):
            holders = self.by_blob[blob]
            holders.discard(peer)
            if not holders:
                del self.by_blob[blob]

    def holders(self, blob: str) -> tuple[str, ...]:
        return tuple(sorted(self.by_blob.get(blob, ())))


HOLDERS = {
    "linear": "ollamamax.models.holders:LinearPeers",
    "indexed": "ollamamax.models.holders:IndexedPeers",
}
