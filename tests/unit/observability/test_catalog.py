"""Every metric the gateway and node export is documented in docs/metrics.md."""

from __future__ import annotations

from pathlib import Path

from ollamamax.metrics import GatewayMetrics, NodeMetrics

DOC = Path(__file__).parents[3] / "docs" / "metrics.md"


def names(registry) -> set[str]:
    out = set()
    for family in registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        out.add(family.name + suffix)
    return out


def test_every_metric_is_in_docs_metrics_md():
    doc = DOC.read_text()
    exported = names(GatewayMetrics().registry) | names(NodeMetrics().registry)
    missing = sorted(name for name in exported if f"`{name}`" not in doc)
    assert not missing, f"not in docs/metrics.md: {missing}"


def test_the_catalogue_has_what_the_issue_asks_for():
    exported = names(GatewayMetrics().registry)
    for name in ("ollamamax_gateway_model_requests_total", "ollamamax_gateway_model_ttft_seconds",
                 "ollamamax_gateway_inter_token_seconds", "ollamamax_gateway_model_request_seconds",
                 "ollamamax_gateway_generated_tokens_total", "ollamamax_gateway_queue_depth",
                 "ollamamax_gateway_queue_wait_seconds", "ollamamax_gateway_schedule_seconds",
                 "ollamamax_gateway_retries_total", "ollamamax_gateway_ejections_total",
                 "ollamamax_cache_lookups_total", "ollamamax_sync_bytes_total",
                 "ollamamax_sync_progress_ratio", "ollamamax_gateway_process_resident_memory_bytes",
                 "ollamamax_gateway_process_cpu_seconds_total"):
        assert name in exported, name
    assert "ollamamax_node_process_resident_memory_bytes" in names(NodeMetrics().registry)
