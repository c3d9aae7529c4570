"""`ollamamax status`, `top` and `alerts` without a gateway: errors, rendering, the export."""

from __future__ import annotations

import socket

from typer.testing import CliRunner

from ollamamax.cli import _register, app
from ollamamax.cli.status import render

_register()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_says_when_the_gateway_cannot_be_reached(monkeypatch):
    monkeypatch.delenv("OLLAMAMAX_GATEWAY", raising=False)
    url = f"http://127.0.0.1:{closed_port()}"
    result = CliRunner().invoke(app, ["status", "--gateway", url])
    assert result.exit_code == 2 and "cannot reach the gateway" in result.output


def test_the_gateway_comes_from_the_environment(monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("OLLAMAMAX_GATEWAY", url)
    result = CliRunner().invoke(app, ["top", "--once"])
    assert result.exit_code == 2 and url in result.output


def test_render_shows_nodes_models_and_active_alerts():
    from rich.console import Console

    doc = {"gateway": {"strategy": "intelligent", "nodes": 2, "nodes_healthy": 1,
                       "requests_per_s": 3.5, "ttft_p95_ms": 120.0, "in_flight": 1, "queued": 0,
                       "memory_mb": 70.0, "cpu_percent": 2.0, "draining": False},
           "nodes": [{"id": "gpu-a", "healthy": True, "draining": False, "ejected": False,
                      "engine": "ollama", "loaded": [{"name": "m:1b", "busy": 1, "slots": 2}],
                      "slots_busy": 1, "slots": 2, "queue_depth": 0, "in_flight": 1,
                      "served": 9, "memory_mb": 300.0, "cpu_percent": 12.0},
                     {"id": "gpu-b", "healthy": False, "draining": False, "ejected": False,
                      "engine": None, "loaded": [], "slots_busy": 0, "slots": 0,
                      "queue_depth": 0, "in_flight": 0, "served": 0, "memory_mb": None}],
           "models": [{"name": "m:1b", "size": 1 << 30, "nodes": ["gpu-a", "gpu-b"],
                       "loaded_on": ["gpu-a"]}],
           "alerts": [{"rule": "ttft", "state": "firing", "severity": "warning", "value": 12000.0,
                       "unit": "ms", "warning": 10000, "critical": 30000},
                      {"rule": "cpu", "state": "ok", "severity": "", "value": 2.0, "unit": "%",
                       "warning": 75, "critical": 90}],
           "transfers": [], "charts": {"requests_per_s": [1.0, None, 3.0], "ttft_p95_ms": []}}
    console = Console(width=200, record=True)
    console.print(render(doc, "http://gw", charts=True))
    text = console.export_text()
    for word in ("gpu-a", "gpu-b", "down", "m:1b 1/2", "1 GB", "ttft", "firing", "1 alert firing",
                 "req/s"):
        assert word in text, word
    assert "cpu " not in text.split("alerts")[-1]  # only rules that are not ok are listed


def test_alerts_export_writes_a_rules_file(tmp_path):
    out = tmp_path / "rules.yml"
    result = CliRunner().invoke(app, ["alerts", "export", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.count("- alert: ") == 10 and "groups:" in text
