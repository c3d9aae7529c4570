"""``consistent_hash_bounded``: consistent hashing with bounded loads.

Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads" (SODA 2018), as
HAProxy (`hash-balance-factor`) and Envoy's ring hash with a balance factor use it:

- a ring of every present node, `VIRTUAL_NODES` points each, from stable hashes of the node
  id (the same ring in every gateway and after a restart); it is rebuilt only when
  membership changes (a node joins or leaves), never on health changes: a node that is down
  keeps its points and the walk steps over it, so its keys come back when it does;
- the request's key is a hash of its model and its first prompt block (so requests sharing
  a system prompt share a node and its prefix cache), or of the model alone without a prompt;
- from the key clockwise, the first candidate whose load is below the bound
  ``ceil(c x (total load + 1) / candidates)`` with ``c = 1.25`` (the "+ 1" counts this
  request), load being the gateway-side requests in flight. Some candidate is always below
  the bound (the least loaded one is below the average), so the walk ends.

Fallbacks: the other candidates in ring order, those under the bound first.
"""

from __future__ import annotations

import numpy as np

from ollamamax.scheduler.decide import Candidates
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.strategies._hashing import GOLDEN, mix64, stable_hash
from ollamamax.scheduler.strategies._ordering import as_tuple
from ollamamax.scheduler.view import ClusterView

VIRTUAL_NODES = 100
BALANCE = (5, 4)  # c = 5/4 = 1.25, kept as a fraction so the bound is exact integer arithmetic
FIRST_STEP = 32  # ring points examined before widening the walk

_U64 = np.uint64


def request_key(request: RouteRequest) -> int:
    data = request.model.encode()
    if request.prefix:
        data += b"\0" + (request.prefix[0] % 2**64).to_bytes(8, "little")
    return stable_hash(data)


def load_bound(total_load: int, n: int) -> int:
    """``ceil(1.25 x (total_load + 1) / n)`` exactly."""
    num, den = BALANCE[0] * (total_load + 1), BALANCE[1] * n
    return -(-num // den)


class Ring:
    """Points sorted clockwise and the node owning each; immutable once built."""

    __slots__ = ("keys", "owners")

    def __init__(self, bases: np.ndarray, nodes: np.ndarray) -> None:
        replicas = np.arange(VIRTUAL_NODES, dtype=_U64) * GOLDEN
        points = mix64(bases[nodes][:, None] + replicas[None, :]).ravel()
        owners = np.repeat(nodes, VIRTUAL_NODES)
        order = np.argsort(points, kind="stable")
        self.keys = points[order]
        self.owners = owners[order]

    def start(self, key: int) -> int:
        """The first point at or clockwise after `key`."""
        return int(np.searchsorted(self.keys, _U64(key))) % max(1, len(self.keys))

    def walk(self, start: int, ok: np.ndarray) -> int:
        """The owner of the first point from `start` whose node is ok, or -1."""
        size, done, total = FIRST_STEP, 0, len(self.keys)
        while done < total:
            steps = (start + np.arange(done, min(done + size, total))) % total
            owners = self.owners[steps]
            hits = ok[owners]
            if hits.any():
                return int(owners[int(hits.argmax())])
            done += size
            size *= 4
        return -1

    def order(self, start: int) -> np.ndarray:
        """Every node on the ring once, in clockwise order from `start`."""
        rolled = np.roll(self.owners, -start)
        _, first = np.unique(rolled, return_index=True)
        return rolled[np.sort(first)]


class ConsistentHashBounded:
    name = "consistent_hash_bounded"

    def __init__(self, seed: int = 0) -> None:
        del seed  # deterministic
        self.view: ClusterView | None = None
        self.bases = np.zeros(0, _U64)  # per node number: the hash of its id
        self.members = np.zeros(0, np.bool_)  # who was present when the ring was built
        self.ring: Ring | None = None

    # -- membership ------------------------------------------------------------------------

    def bind(self, view: ClusterView) -> None:
        self.view = view
        self.bases = np.zeros(0, _U64)  # node numbers mean other nodes in another view
        self.ring = None
        view.subscribe(self)

    def node_changed(self, view: ClusterView, node: int) -> None:
        if view is self.view and (node >= len(self.members)
                                  or bool(self.members[node]) != bool(view.present[node])):
            self.ring = None

    def cell_changed(self, view: ClusterView, node: int, model: int) -> None:
        """Models do not move nodes on the ring."""

    def model_added(self, view: ClusterView, model: int) -> None:
        """Models do not move nodes on the ring."""

    def resized(self, view: ClusterView) -> None:
        """Node numbers do not change when capacity grows."""

    def _current_ring(self, view: ClusterView) -> Ring:
        if self.view is not view:
            self.bind(view)
        if self.ring is None or len(self.members) != view.n:
            if len(self.bases) < view.n:
                fresh = [stable_hash(view.ids[i].encode()) for i in range(len(self.bases), view.n)]
                self.bases = np.concatenate([self.bases, np.array(fresh, _U64)])
            self.members = view.present[: view.n].copy()
            self.ring = Ring(self.bases, np.flatnonzero(self.members))
        return self.ring

    # -- deciding --------------------------------------------------------------------------

    def choose(self, request: RouteRequest, candidates: Candidates, view: ClusterView,
               now: float) -> Decision:
        ring = self._current_ring(view)
        idx = candidates.indices
        bound = load_bound(int(view.in_flight[idx].sum()), len(idx))
        member = candidates.mask.copy()
        under = member & (view.in_flight < bound)
        start = ring.start(request_key(request))
        node = ring.walk(start, under)
        if node < 0:  # cannot happen while every candidate is on the ring; stay safe
            node = int(idx[0])
        return Decision(node, lambda: _fallbacks(ring, start, member, under),
                        f"ring owner under the load bound {bound}")


def _fallbacks(ring: Ring, start: int, member: np.ndarray, under: np.ndarray) -> tuple[int, ...]:
    order = ring.order(start)
    order = order[member[order]]
    return as_tuple(np.concatenate([order[under[order]], order[~under[order]]]))
