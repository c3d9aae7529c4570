"""``ollamamax bench sync``: a tiny run of real peer processes on a real etcd, for the shape
of its JSON (the figures themselves are measured by hand: docs/sync.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ollamamax.bench.sync import KEYS, lower_bound
from ollamamax.testing.etcd import missing_reason

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]


def test_a_small_run_writes_exactly_the_documented_figures(tmp_path) -> None:
    out = tmp_path / "sync.json"
    done = subprocess.run([sys.executable, "-m", "ollamamax", "bench", "sync", "--nodes", "2",
                           "--size-mb", "1", "--upload-mbps", "20", "--chunk-kb", "128",
                           "--dir", str(tmp_path), "--json", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result) == list(KEYS)
    assert result["nodes"] == 2 and result["size_bytes"] == 1_000_000
    assert result["upload_Bps"] == 20e6
    assert result["lower_bound_s"] == pytest.approx(lower_bound(1_000_000, 2, 20e6), abs=1e-3)
    assert result["p2p_s"] > 0 and result["naive_s"] > 0
    assert result["origin_egress_bytes"] >= 1_000_000  # every byte left the origin once
    assert result["verified"] is True
    assert "goal: every copy verified: met" in done.stdout


def test_the_lower_bound_is_the_swarm_bound() -> None:
    assert lower_bound(64_000_000, 8, 20e6) == pytest.approx(3.2)  # S/U dominates
    assert lower_bound(64_000_000, 1, 20e6) == pytest.approx(3.2)
    assert lower_bound(100, 3, 1.0) == pytest.approx(100)
