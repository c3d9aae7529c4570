"""``ollamamax bench membership --quick``: the shape of its JSON, on a real etcd."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ollamamax.bench.membership import KEYS
from ollamamax.testing.etcd import missing_reason

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]


def test_quick_run_writes_exactly_the_documented_figures(tmp_path) -> None:
    out = tmp_path / "membership.json"
    done = subprocess.run([sys.executable, "-m", "ollamamax", "bench", "membership", "--quick",
                           "--nodes", "20", "--json", str(out)],
                          capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert list(result) == list(KEYS)
    assert result["nodes"] == 20 and isinstance(result["nodes"], int)
    for key in KEYS[1:]:
        assert isinstance(result[key], float) and result[key] > 0, (key, result)
    assert result["dead_node_removed_s"] < 2 + 3  # TTL 2 s, generously
    assert "goal: propagation p99 <= 100 ms" in done.stdout
