"""Monitoring end to end on real processes: the metrics catalogue moving with requests,
request ids from client to node and back, an alert firing and resolving with its webhook,
`ollamamax status --json`, and the dashboard in a real (headless) Chromium."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from ollamamax.testing.browser import MISSING as NO_CHROMIUM
from ollamamax.testing.browser import launch
from ollamamax.testing.cluster import LocalCluster

MODEL = "m:1b"
ARTIFACTS = Path(__file__).parents[1] / "artifacts"
NODE_ARGS = ["--sim-profile", "cpu-small", "--sim-speed", "4", "--sim-model", f"{MODEL}=123456",
             "--num-parallel", "2", "--log-format", "json", "--log-level", "debug"]
# TTFT above 0 ms for 0.6 s: any request trips it, and it resolves once no request is in the
# 1.5 s window. Memory above 1 MB: firing all along, for the dashboard to show.
CONFIG = """
[alerts]
interval = 0.2
window = 1.5
webhooks = ["{webhook}"]
webhook_retries = 1

[alerts.rules.ttft]
warning = 0
critical = 1e9
for = 0.6

[alerts.rules.memory]
warning = 1
critical = 2
for = 0
"""


class WebhookReceiver:
    """An aiohttp server on 127.0.0.1, port 0, in its own thread, keeping what it receives."""

    def __init__(self) -> None:
        self.payloads: list[dict] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()

        async def hook(request: web.Request) -> web.Response:
            self.payloads.append(await request.json())
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def about(self, rule: str) -> list[tuple[str, str]]:
        return [(a["status"], a["labels"]["severity"]) for p in list(self.payloads)
                for a in p["alerts"] if a["labels"]["rule"] == rule]


@pytest.fixture(scope="module")
def webhook():
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, webhook):
    run_dir = tmp_path_factory.mktemp("monitoring")
    config = run_dir / "gateway.toml"
    config.write_text(CONFIG.replace("{webhook}", webhook.url))
    c = LocalCluster(run_dir, engine="sim", nodes=2, node_args=NODE_ARGS,
                     gateway_args=["--config", str(config)]).start()
    yield c
    c.stop()


def samples(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(url + "/metrics", timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics, name, **labels) -> float:
    return sum(v for (n, ls), v in metrics.items() if n == name and set(labels.items()) <= set(ls))


def generate(url: str, n: int, **headers: str) -> list[httpx.Response]:
    body = {"model": MODEL, "prompt": "hello", "stream": False, "options": {"num_predict": 4}}
    return [httpx.post(url + "/api/generate", json=body, headers=headers, timeout=30)
            for _ in range(n)]


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what} not seen within {timeout:g} s")


def test_the_catalogue_moves_as_requests_flow(cluster):
    before = samples(cluster.url)
    assert all(r.status_code == 200 for r in generate(cluster.url, 3))
    with ollama.Client(host=cluster.url) as client:
        list(client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
                         options={"num_predict": 4}))
    after = samples(cluster.url)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("ollamamax_gateway_model_requests_total", model=MODEL, outcome="ok") == 4
    assert delta("ollamamax_gateway_model_ttft_seconds_count", model=MODEL) == 4
    assert delta("ollamamax_gateway_model_request_seconds_count", model=MODEL) == 4
    assert delta("ollamamax_gateway_inter_token_seconds_count", model=MODEL) == 4
    assert delta("ollamamax_gateway_generated_tokens_total", model=MODEL) == 16
    assert delta("ollamamax_gateway_prompt_tokens_total", model=MODEL) > 0
    assert delta("ollamamax_gateway_schedule_seconds_count") >= 4
    assert delta("ollamamax_gateway_queue_wait_seconds_count") == 4
    assert delta("ollamamax_gateway_queue_wait_seconds_bucket", le="+Inf") == 4
    nodes = {n for (name, labels), v in after.items()
             if name == "ollamamax_gateway_model_requests_total" and v
             for k, n in labels if k == "node"}
    assert nodes <= {"node-1", "node-2"} and nodes
    assert value(after, "ollamamax_gateway_process_resident_memory_bytes") > 10e6
    assert value(after, "ollamamax_gateway_process_cpu_seconds_total") > 0
    assert value(after, "ollamamax_cache_lookups_total", tier="memory", result="hit") == 0
    assert value(after, "ollamamax_sync_bytes_total", direction="sent") == 0
    assert value(after, "ollamamax_gateway_queue_depth") == 0
    assert value(after, "ollamamax_gateway_node_slots", node="node-1") >= 0
    assert value(after, "ollamamax_gateway_alerts_firing", rule="memory", severity="critical") == 1
    node = samples(cluster.node("node-1").url)
    assert value(node, "ollamamax_node_process_resident_memory_bytes") > 10e6
    assert value(node, "ollamamax_sync_transfers_active") == 0


def test_request_ids_go_to_the_node_and_come_back(cluster):
    (reply,) = generate(cluster.url, 1, **{"X-Request-Id": "trace-42.a"})
    assert reply.status_code == 200 and reply.headers["X-Request-Id"] == "trace-42.a"
    made = httpx.get(cluster.url + "/api/version").headers["X-Request-Id"]
    assert len(made) == 16 and made != "trace-42.a"
    bad = httpx.get(cluster.url + "/api/version", headers={"X-Request-Id": "no spaces allowed"})
    assert bad.headers["X-Request-Id"] != "no spaces allowed"

    def logged():
        lines = [json.loads(line) for name in ("node-1", "node-2")
                 for line in cluster.log(name).splitlines() if line.startswith("{")]
        return [doc for doc in lines if doc.get("request_id") == "trace-42.a"]

    found = wait_for(logged, 5, "the request id in a node's log")
    assert any("generate answered 200" in doc["msg"] for doc in found)


def test_an_alert_fires_after_its_for_duration_then_resolves(cluster, webhook):
    def ttft_state():
        alerts = {a["rule"]: a for a in cluster.get("/admin/alerts")["alerts"]}
        return alerts["ttft"]

    wait_for(lambda: ttft_state()["state"] == "ok", 10, "the ttft rule at rest")
    started = time.time()
    stop = threading.Event()

    def load():
        while not stop.is_set():
            generate(cluster.url, 1)
            time.sleep(0.03)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        firing = wait_for(lambda: (s := ttft_state())["state"] == "firing" and s, 10, "firing")
    finally:
        stop.set()
        loader.join(30)
    assert firing["severity"] == "warning" and firing["value"] > 0
    assert firing["fired_at"] - started >= 0.6 - 0.05  # not before its `for` duration
    resolved = wait_for(lambda: (s := ttft_state())["state"] == "ok" and s, 10, "resolved")
    assert resolved["resolved_at"] >= firing["fired_at"]
    wait_for(lambda: ("resolved", "warning") in webhook.about("ttft"), 10, "the webhook")
    assert webhook.about("ttft")[-2:] == [("firing", "warning"), ("resolved", "warning")]
    payload = next(p for p in webhook.payloads
                   if any(a["labels"]["rule"] == "ttft" for a in p["alerts"]))
    alert = next(a for a in payload["alerts"] if a["labels"]["rule"] == "ttft")
    assert payload["version"] == "4" and alert["labels"]["alertname"] == "OllamaMaxTtft"
    assert alert["startsAt"].endswith("Z") and "time to first token" in alert["annotations"]["summary"]
    metrics = samples(cluster.url)
    assert value(metrics, "ollamamax_gateway_alert_notifications_total", result="sent") >= 2


def test_status_json_matches_the_cluster(cluster):
    from ollamamax.cli import _register, app

    _register()
    result = CliRunner().invoke(app, ["status", "--gateway", cluster.url, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    admin = {n["id"]: n for n in cluster.nodes()}
    shown = {n["id"]: n for n in doc["nodes"]}
    assert set(shown) == set(admin) == {"node-1", "node-2"}
    for node_id, node in shown.items():
        assert node["healthy"] == admin[node_id]["healthy"] is True
        assert node["engine"] == "sim" and node["models"] == admin[node_id]["models"] == [MODEL]
    (model,) = doc["models"]
    assert model["name"] == MODEL and sorted(model["nodes"]) == ["node-1", "node-2"]
    assert doc["gateway"]["nodes_healthy"] == 2 and doc["gateway"]["strategy"]
    assert "charts" not in doc
    table = CliRunner().invoke(app, ["status", "--gateway", cluster.url])
    assert table.exit_code == 0 and "node-1" in table.stdout and MODEL in table.stdout
    live = CliRunner().invoke(app, ["top", "--gateway", cluster.url, "--iterations", "2",
                                    "--interval", "0.05"])
    assert live.exit_code == 0 and "node-2" in live.stdout and "req/s" in live.stdout
    rules = CliRunner().invoke(app, ["alerts", "list", "--gateway", cluster.url])
    assert rules.exit_code == 0 and "ttft" in rules.stdout and "scheduling_time" in rules.stdout
    assert "unexpected error" not in cluster.log("gateway")


@pytest.mark.skipif(bool(NO_CHROMIUM), reason=NO_CHROMIUM)
def test_the_dashboard_shows_nodes_charts_and_an_alert(cluster):
    playwright = pytest.importorskip("playwright.sync_api")
    generate(cluster.url, 3)
    shot = ARTIFACTS / "dashboard.png"
    ARTIFACTS.mkdir(exist_ok=True)
    seen: dict = {}

    def browse() -> None:  # Playwright's sync API, in a thread with no event loop of its own
        with playwright.sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(cluster.url + "/dashboard")
                page.wait_for_selector("#live.on", timeout=10_000)
                page.wait_for_selector('#nodes tr[data-node="node-2"]', timeout=10_000)
                seen["nodes"] = page.locator("#nodes .node-name").all_inner_texts()
                seen["health"] = page.locator("#nodes tbody tr").first.inner_text()
                page.wait_for_function(
                    "Number(document.querySelector('#chart-rate').dataset.points) > 1",
                    timeout=10_000)
                seen["lines"] = page.locator("#chart-rate polyline").count()
                seen["ttft_points"] = int(page.locator("#chart-ttft").get_attribute("data-points"))
                row = page.locator('#alerts tr.state-firing[data-rule="memory"]')
                row.wait_for(timeout=10_000)
                seen["alert"] = row.inner_text()
                seen["models"] = page.locator("#models tbody").inner_text()
                seen["transfers"] = page.locator("#transfers-empty").inner_text()
                seen["flags"] = page.locator("#flags tbody").inner_text()
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(browse).result(timeout=90)
    assert sorted(seen["nodes"]) == ["node-1", "node-2"]
    assert "healthy" in seen["health"] and "sim" in seen["health"]
    assert seen["lines"] >= 1 and seen["ttft_points"] >= 1
    assert "gateway memory" in seen["alert"] and "firing" in seen["alert"]
    assert "critical" in seen["alert"]
    assert MODEL in seen["models"] and "node-1" in seen["models"]
    assert "No model transfers" in seen["transfers"]
    assert "scheduler.strategy" in seen["flags"]
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"
