"""Feature flags on a real gateway: switching and rolling back under load loses no request;
the CLI drives the admin API; the metric counts every request once per flag."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
from typer.testing import CliRunner

from ollamamax import variants
from ollamamax.cli import _register, app
from ollamamax.testing.cluster import LocalCluster

MODEL = "flagged:1b"
_register()
runner = CliRunner()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("flags")
    c = LocalCluster(run_dir, engine="sim", nodes=2, node_args=[
        "--sim-profile", "cpu-small", "--sim-speed", "50", "--sim-model", f"{MODEL}=1000000",
        "--num-parallel", "2"], env={"OLLAMAMAX_GATEWAY_FLAGS_FILE": str(run_dir / "flags.json")}
    ).start()
    yield c
    c.stop()


def strategy_counts(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    pattern = r'ollamamax_flag_requests_total\{flag="scheduler.strategy",variant="(\w+)"\} (\S+)'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text)}


def worker(url: str, stop: threading.Event, results: list, k: int) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        n = 0
        while not stop.is_set():
            n += 1
            stream = n % 2 == 0
            body = {"model": MODEL, "prompt": f"worker {k} request {n}", "stream": stream,
                    "options": {"num_predict": 6}}
            r = client.post("/api/generate", json=body)
            ok = r.status_code == 200 and '"done":true' in r.text.replace(" ", "") \
                and '"error"' not in r.text
            results.append((r.status_code, ok, r.text[-200:]))


CHANGES = [  # (method, flag, body) — switches and rollbacks of every request-path flag
    ("PUT", variants.STRATEGY, {"variant": "round_robin", "percent": 50}),
    ("PUT", variants.QUEUE_ORDER, {"variant": "sorted_list"}),
    ("PUT", variants.STRATEGY, {"variant": "least_busy"}),
    ("PUT", variants.WEIGHTS, {"variant": "recompute"}),
    ("POST", variants.STRATEGY, None),  # rollback: round_robin 50%
    ("PUT", variants.HISTORY, {"variant": "list"}),
    ("PUT", variants.CONSTRAINTS, {"variant": "nested_loop"}),
    ("POST", variants.STRATEGY, None),  # rollback: intelligent
    ("PUT", variants.STRATEGY, {"variant": "p2c", "percent": 30}),
    ("POST", variants.QUEUE_ORDER, None),
    ("POST", variants.WEIGHTS, None),
    ("POST", variants.HISTORY, None),
    ("POST", variants.CONSTRAINTS, None),
    ("POST", variants.STRATEGY, None),
]


def test_switching_flags_under_load_loses_no_request(cluster):
    url = cluster.url
    assert httpx.post(url + "/api/generate", json={"model": MODEL, "prompt": "warm",
                                                  "stream": False}, timeout=30).is_success
    before = strategy_counts(url)
    stop, results = threading.Event(), []
    threads = [threading.Thread(target=worker, args=(url, stop, results, k)) for k in range(6)]
    for t in threads:
        t.start()
    try:
        for method, flag, body in CHANGES:
            time.sleep(0.15)
            path = f"/admin/flags/{flag}" + ("/rollback" if method == "POST" else "")
            r = httpx.request(method, url + path, json=body)
            assert r.status_code == 200, r.text
        time.sleep(0.15)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert len(results) >= 30, f"too little load to switch under: {len(results)} requests"
    failed = [r for r in results if not r[1]]
    assert not failed, failed[:3]
    flags = {f["name"]: f for f in httpx.get(url + "/admin/flags").json()["flags"]}
    assert flags[variants.STRATEGY]["variant"] == "intelligent"
    assert all(not f["history"] or f["variant"] == f["default"] for f in flags.values())
    after = strategy_counts(url)
    routed = sum(after.values()) - sum(before.values())
    assert routed == len(results), "every request counted once for the strategy flag"
    assert {"intelligent", "round_robin", "least_busy", "p2c"} <= set(after)


def test_the_cli_lists_sets_and_rolls_back(cluster):
    gw = ["--gateway", cluster.url]
    r = runner.invoke(app, ["flags", "set", variants.STRATEGY, "random", "--percent", "20", *gw])
    assert r.exit_code == 0, r.output
    assert "random 20%, else intelligent" in r.output
    r = runner.invoke(app, ["flags", "list", *gw])
    assert r.exit_code == 0 and variants.QUEUE_ORDER in r.output and "random 20%" in r.output
    r = runner.invoke(app, ["flags", "rollback", variants.STRATEGY, *gw])
    assert r.exit_code == 0 and "scheduler.strategy: intelligent" in r.output
    r = runner.invoke(app, ["flags", "set", variants.STRATEGY, "fastest", *gw])
    assert r.exit_code == 1 and "no variant 'fastest'" in r.output
    r = runner.invoke(app, ["flags", "list", "--gateway", "http://127.0.0.1:9"])
    assert r.exit_code == 2 and "cannot reach the gateway" in r.output
