"""Which nodes carry a request's required labels and none of its excluded ones.

Two filters with one signature, ``(view, require, exclude) -> mask | None`` (None: no
constraint, every node passes), chosen by name (flag ``scheduler.constraints``):

- ``index`` (default): `ClusterView.label_mask`: the view keeps one boolean array per label,
  updated when a node's labels change, so a request's filter is m vectorised ANDs.
- ``nested_loop``: the optimisation catalogue's "before": a loop over nodes x constraints,
  O(m x n) in Python per request.

Both answer for every node slot, the unused ones past `view.n` included (they carry no
labels), so the arrays are identical (property-tested).
"""

from __future__ import annotations

import numpy as np

from ollamamax.scheduler.view import ClusterView

indexed_label_mask = ClusterView.label_mask


def nested_label_mask(view: ClusterView, require: frozenset[str],
                      exclude: frozenset[str]) -> np.ndarray | None:
    if not require and not exclude:
        return None
    mask = np.zeros(view.capacity, np.bool_)
    labels = view.labels
    for i in range(view.capacity):
        mine = labels[i] if i < view.n else frozenset()
        ok = True
        for label in require:
            if label not in mine:
                ok = False
                break
        if ok:
            for label in exclude:
                if label in mine:
                    ok = False
                    break
        mask[i] = ok
    return mask
