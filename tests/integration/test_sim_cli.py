"""``ollamamax sim`` end to end, as a process: the JSON report and the table.

Only the shape of the results is checked; the figures themselves are never asserted.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

from ollamamax.sim.run import RESULT_KEYS, available_strategies

WANTED = ["intelligent", "round_robin", "least_busy", "sglang_cache_aware", "loaded_least_busy"]


def sim(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ollamamax", "sim", *args], check=False,
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def test_sim_compares_strategies_and_writes_json(tmp_path):
    names = [s for s in WANTED if s in available_strategies()]
    out = tmp_path / "sim.json"
    done = sim("--nodes", "4", "--requests", "200", "--workload", "shared-prefix",
               "--strategy", ",".join(names), "--json", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr

    report = json.loads(out.read_text())
    assert report["workload"] == "shared-prefix" and report["nodes"] == 4
    assert [r["strategy"] for r in report["results"]] == names
    for result in report["results"]:
        assert result.keys() >= set(RESULT_KEYS)
        assert result["requests"] == 200
        assert 0 <= result["failed"] <= 200
        assert result["ttft_p50_s"] <= result["ttft_p90_s"] <= result["ttft_p99_s"]
        assert math.isfinite(result["e2e_p99_s"]) and result["throughput_rps"] > 0
        assert 0 <= result["prefix_hit_rate"] <= 1 and result["cold_loads"] >= 1
    for name in names:
        assert name in done.stdout  # the table


def test_sim_without_the_trace_file_says_so(tmp_path):
    done = sim("--workload", "trace", "--trace", str(tmp_path / "absent.jsonl"), cwd=tmp_path)
    assert done.returncode == 2
    message = " ".join(done.stderr.split())  # rich wraps long lines
    assert "does not exist" in message and "Traceback" not in message


def test_sim_refuses_an_unknown_strategy_listing_the_valid_ones(tmp_path):
    done = sim("--requests", "10", "--strategy", "fastest", cwd=tmp_path)
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "unknown strategy 'fastest'" in message and "intelligent" in message
