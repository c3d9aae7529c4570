"""`ollamamax bench catalog --quick`: the report's shape (timings are never asserted)."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from ollamamax.bench import catalog
from ollamamax.cli import _register, app

_register()

METRICS = ["task_scheduling_time", "lb_selection_time", "model_sync_duration",
           "scheduler_memory", "cpu_peak", "throughput"]


def test_quick_catalog_writes_the_table_and_the_exponents(tmp_path):
    out = tmp_path / "catalog.json"
    result = CliRunner().invoke(app, ["bench", "catalog", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "goal: task_scheduling_time after <= 160 us" in result.output
    report = json.loads(out.read_text())
    assert set(report) == {"rows", "complexity"}
    assert [r["metric"] for r in report["rows"]] == METRICS
    for row in report["rows"]:
        assert set(row) == {"metric", "unit", "before", "after", "seed_before", "seed_after"}
        assert isinstance(row["unit"], str)
        for key in ("before", "after", "seed_before", "seed_after"):
            assert isinstance(row[key], float) and row[key] > 0, (row["metric"], key)
    names = [c["component"] for c in report["complexity"]]
    assert {"task_queue", "constraint_checking", "node_selection", "conflict_resolution",
            "version_comparisons"} <= set(names)
    for c in report["complexity"]:
        assert set(c) == {"component", "before_exponent", "after_exponent", "claimed_before",
                          "claimed_after"}
        assert all(math.isfinite(c[k]) for k in ("before_exponent", "after_exponent"))
        assert isinstance(c["claimed_before"], str) and isinstance(c["claimed_after"], str)


def test_claimed_complexities_read_as_exponents():
    assert catalog.claimed_exponent("O(n²)") == 2
    assert catalog.claimed_exponent("O(log n)") == 0
    assert catalog.claimed_exponent("O(1) avg") == 0
    assert catalog.claimed_exponent("O(n log n)") == 1
    assert catalog.claimed_exponent("O(n) (linear peer search)") == 1
    assert catalog.claimed_exponent("not stated") is None


def test_exponent_fits_a_power_law():
    sizes = [100, 1000, 10_000]
    assert catalog.exponent(sizes, [n**1.5 * 1e-9 for n in sizes]) == 1.5
