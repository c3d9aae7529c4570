"""The gateway benchmark's results: derived figures, JSON shape, verdicts, table (no processes)."""

from __future__ import annotations

import json

import pytest
import typer
from rich.console import Console

from ollamamax.bench import gateway as bench
from ollamamax.cli.bench import _levels


def side(p50: float, p99: float, rps: float, errors: dict[str, int] | None = None) -> bench.Side:
    return bench.Side(p50, p99, rps, 100, errors or {},
                      {"gateway": 300.0, "loadgen": 50.0, "node": 400.0})


def case(concurrency: int, stream: bool, gateway_rps: float = 2500.0) -> bench.CaseResult:
    return bench.CaseResult(concurrency, stream, side(0.5, 1.5, 3000.0),
                            side(0.8, 2.0, gateway_rps))


def test_added_figures_are_differences_of_percentiles():
    c = case(1, False)
    assert c.added_p50_ms == pytest.approx(0.3)
    assert c.added_p99_ms == pytest.approx(0.5)  # gateway p99 - direct p99


def test_json_has_the_documented_keys(tmp_path):
    report = bench.BenchReport(bench.BenchOptions(), [case(1, False), case(64, True)])
    path = tmp_path / "out.json"
    report.write_json(path)
    data = json.loads(path.read_text())
    first = data["cases"][0]
    assert {"concurrency": 1, "stream": False, "direct_p50_ms": 0.5, "gateway_p50_ms": 0.8,
            "added_p50_ms": 0.3, "added_p99_ms": 0.5, "direct_rps": 3000.0,
            "gateway_rps": 2500.0}.items() <= first.items()
    assert data["errors"] == 0
    assert "gateway_p99_ms - direct_p99_ms" in data["definitions"]["added_p99_ms"]


def test_errors_are_counted_and_shown():
    bad = bench.CaseResult(16, False, side(1, 2, 10, {"HTTP 503": 3}),
                           side(1, 2, 10, {"timeout": 1}))
    report = bench.BenchReport(bench.BenchOptions(), [case(1, False), bad])
    assert report.error_count == 4
    assert report.to_json()["cases"][1]["errors"] == {"direct": {"HTTP 503": 3},
                                                      "gateway": {"timeout": 1}}
    console = Console(width=200, record=True)
    console.print(bench.table(report))
    assert "4" in console.export_text()


def test_goals_say_met_missed_or_not_measured():
    report = bench.BenchReport(bench.BenchOptions(), [case(1, False), case(64, False, 1500.0)])
    verdicts = dict(report.goals())
    assert verdicts["added p50 <= 0.5 ms at concurrency 1"] is True
    assert verdicts["added p99 <= 2 ms at concurrency 1"] is True
    assert verdicts[">= 2,000 requests/s non-streamed at concurrency 64"] is False
    only16 = bench.BenchReport(bench.BenchOptions(), [case(16, True)])
    assert all(met is None for _, met in only16.goals())


def test_options_split_requests_into_rounds():
    assert bench._split(10, 4) == [3, 3, 2, 2]
    assert sum(bench._split(4000, 4)) == 4000
    assert bench.BenchOptions().warmup_for(64) == 256
    assert bench.BenchOptions.quick().warmup_for(64) == 4
    with pytest.raises(ValueError):
        bench.BenchOptions(requests=2, rounds=4)
    with pytest.raises(ValueError):
        bench.BenchOptions(concurrency=(0,))


def test_request_bodies_ask_for_a_short_answer():
    body = json.loads(bench.chat_body(stream=True))
    assert body["stream"] is True and body["options"]["num_predict"] == bench.NUM_PREDICT
    assert body["model"] == bench.MODEL and body["messages"][0]["role"] == "user"


def test_concurrency_levels_parse():
    assert _levels("1, 16,64") == (1, 16, 64)
    for bad in ("", "a,b", "0,4"):
        with pytest.raises(typer.BadParameter):
            _levels(bad)
