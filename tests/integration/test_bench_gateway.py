"""``ollamamax bench gateway --quick`` end to end: real node and gateway processes.

Only the shape of the results is checked; the figures themselves are never asserted.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

KEYS = {"concurrency", "stream", "direct_p50_ms", "gateway_p50_ms", "added_p50_ms",
        "added_p99_ms", "direct_rps", "gateway_rps"}


def test_quick_bench_writes_every_case(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "ollamamax", "bench", "gateway", "--quick", "--json", str(out)],
        check=False, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr

    report = json.loads(out.read_text())
    cases = report["cases"]
    assert {(c["concurrency"], c["stream"]) for c in cases} == {
        (c, s) for c in (1, 16, 64) for s in (False, True)}
    for case in cases:
        assert case.keys() >= KEYS
        for key in ("direct_p50_ms", "gateway_p50_ms", "direct_rps", "gateway_rps"):
            assert case[key] > 0, (key, case)
        assert math.isfinite(case["added_p50_ms"]) and math.isfinite(case["added_p99_ms"])
        assert case["added_p99_ms"] == pytest.approx(
            case["gateway_p99_ms"] - case["direct_p99_ms"], abs=1e-3)
        assert case["errors"] == {"direct": {}, "gateway": {}}
    assert report["errors"] == 0
    assert "gateway_p99_ms - direct_p99_ms" in report["definitions"]["added_p99_ms"]
    # The same figures as a table on stdout.
    assert "added" in done.stdout and "p99" in done.stdout
