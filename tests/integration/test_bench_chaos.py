"""``ollamamax bench chaos --quick`` end to end: five node processes, two fault proxies and a
gateway, every fault of the schedule. Only the shape of the JSON is checked; the figures of
a few seconds mean nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

KEYS = ["requests", "succeeded", "failed_before_first_byte", "failed_mid_stream", "lost",
        "ttft_p99_s", "e2e_p99_s", "retries", "retry_budget_exceeded"]


def test_quick_chaos_bench_writes_both_phases_in_the_documented_shape(tmp_path):
    chaos, baseline = tmp_path / "chaos.json", tmp_path / "baseline.json"
    done = subprocess.run(
        [sys.executable, "-m", "ollamamax", "bench", "chaos", "--quick", "--json", str(chaos),
         "--baseline-json", str(baseline)],
        check=False, capture_output=True, text=True, timeout=110, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for path in (chaos, baseline):
        figures = json.loads(path.read_text())
        assert list(figures) == KEYS
        for key in KEYS:
            expected = float if key.endswith("_s") else int
            assert isinstance(figures[key], expected), (key, figures[key])
        assert figures["requests"] > 0
        assert figures["requests"] == (figures["succeeded"] + figures["failed_before_first_byte"]
                                       + figures["failed_mid_stream"] + figures["lost"])
    assert "node-1 killed (SIGKILL)" in done.stderr and "node-4 stops resetting" in done.stderr
    assert "goal: lost = 0" in done.stdout
