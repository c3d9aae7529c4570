"""The routing benchmarks' own logic (their figures are reported, never asserted)."""

from ollamamax.bench import decide, routing


def result(strategy, p99, **extra):
    return {"strategy": strategy, "ttft_p99_s": p99, "requests": 1000, "cold_loads": 0,
            "max_over_mean_load": 1.0, **extra}


def test_goals_compare_intelligent_with_the_best_other():
    reports = [
        {"workload": "shared-prefix", "results": [result("intelligent", 1.0),
                                                  result("a", 1.6), result("b", 2.0)]},
        {"workload": "multi-turn", "results": [result("intelligent", 1.0), result("a", 1.2)]},
        {"workload": "zipf-models", "results": [result("intelligent", 1.0, cold_loads=20),
                                                result("a", 3.0)]},
        {"workload": "low-sharing", "results": [result("intelligent", 1.04), result("a", 1.0)]},
        {"workload": "trace", "results": [result("intelligent", 1.0, max_over_mean_load=1.3)]},
    ]
    verdicts = {g["goal"].split(":")[0] + (":cold" if "cold" in g["goal"] else ""): g
                for g in routing.goals(reports)}
    assert verdicts["shared-prefix"]["met"] and verdicts["shared-prefix"]["ratio"] == 1.6
    assert verdicts["shared-prefix"]["best_other_strategy"] == "a"
    assert not verdicts["multi-turn"]["met"]
    assert verdicts["zipf-models"]["met"]
    assert not verdicts["zipf-models:cold"]["met"]  # 2% of requests
    assert verdicts["low-sharing"]["met"]  # within 5%
    assert not verdicts["Mooncake trace"]["met"]


def test_markdown_lists_ours_first_then_the_others_by_p99_and_every_goal():
    figures = {"ttft_p50_s": 0.1, "ttft_p90_s": 0.2, "e2e_p99_s": 3.0, "prefix_hit_rate": 0.5,
               "failed": 0}
    report = {"workloads": [{"workload": "multi-turn", "rate_rps": 10.0, "results": [
        result("b", 2.0, **figures), result("intelligent", 3.0, **figures),
        result("a", 1.0, **figures)]}]}
    report["goals"] = routing.goals(report["workloads"])
    text = routing.markdown(report)
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ")][2:]
    assert rows == ["| **intelligent**", "| a", "| b"]
    assert "**multi-turn** (1000 requests measured, 10.0 req/s)" in text
    assert "- multi-turn: TTFT p99 >= 1.5x better than the best other: **missed**" in text


def test_decide_bench_measures_every_strategy_asked():
    results = decide.run([50], ["intelligent", "round_robin"], decisions=20, progress=lambda _: 0)
    assert [(r.strategy, r.nodes, r.decisions) for r in results] == [
        ("intelligent", 50, 20), ("round_robin", 50, 20)]
    assert all(0 < r.p50_us <= r.p99_us for r in results)
def test_goals_of_intelligent_alone_leave_out_the_comparisons():
    reports = [{"workload": name, "results": [result("intelligent", 1.0)]}
               for name in ("shared-prefix", "low-sharing", "zipf-models")]
    goals = [g["goal"] for g in routing.goals(reports)]
    assert goals == ["zipf-models: cold loads <= 1% of requests"]
