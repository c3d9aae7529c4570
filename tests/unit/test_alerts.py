"""Alert rules: levels, `for` durations, notifications, webhooks and the Prometheus export."""

from __future__ import annotations

import asyncio
import json

import pytest

from ollamamax import alerts
from ollamamax.alerts import Alerts, Rule, WebhookNotifier, prometheus_rules, rules_from


def rule(**changes) -> Rule:
    base = Rule("memory", "memory_mb", "gateway memory", "MB", 300, 500, 10, "x")
    return Rule(**{**base.__dict__, **changes})


def step(a: Alerts, value, now):
    return [(n.status, n.severity) for n in a.evaluate({"memory_mb": value}, now)]


def test_a_level_fires_only_after_its_for_duration():
    a = Alerts([rule()])
    assert step(a, 350, 100.0) == []
    assert a.states[0].state == "pending" and a.states[0].severity == "warning"
    assert step(a, 360, 109.9) == []
    assert step(a, 360, 110.0) == [("firing", "warning")]
    assert a.states[0].state == "firing"


def test_a_blip_shorter_than_for_does_not_fire():
    a = Alerts([rule()])
    assert step(a, 350, 0.0) == []
    assert step(a, 100, 5.0) == []  # back under: the clock starts again
    assert step(a, 350, 6.0) == []
    assert step(a, 350, 15.0) == []
    assert step(a, 350, 16.0) == [("firing", "warning")]


def test_critical_escalates_then_everything_resolves():
    a = Alerts([rule(for_s=0)])
    assert step(a, 350, 0.0) == [("firing", "warning")]
    assert step(a, 600, 1.0) == [("firing", "critical")]
    assert step(a, 400, 2.0) == [("firing", "warning")]  # down to warning: said too
    notes = a.evaluate({"memory_mb": 100}, 3.0)
    assert [(n.status, n.severity) for n in notes] == [("resolved", "warning")]
    assert a.states[0].state == "ok" and a.states[0].resolved_at == 3.0


def test_no_data_counts_as_under_the_threshold():
    a = Alerts([rule(for_s=0)])
    step(a, 400, 0.0)
    assert step(a, None, 1.0) == [("resolved", "warning")]


def test_disabled_rules_are_not_evaluated():
    assert Alerts([rule(enabled=False)]).states == []


def test_rules_from_config_overrides():
    rules = {r.name: r for r in rules_from({"memory": {"warning": 400, "for": 5},
                                            "cpu": {"enabled": False}})}
    assert (rules["memory"].warning, rules["memory"].critical, rules["memory"].for_s) == (400, 500, 5)
    assert not rules["cpu"].enabled
    assert rules["scheduling_time"].warning == 50 and rules["scheduling_time"].critical == 100
    assert (rules["error_rate"].warning, rules["error_rate"].critical) == (1, 5)
    with pytest.raises(ValueError, match="valid rules: scheduling_time"):
        rules_from({"memroy": {}})
    with pytest.raises(ValueError, match="above critical"):
        rules_from({"cpu": {"warning": 95}})


def test_notification_payload_is_shaped_like_alertmanagers():
    a = Alerts([rule(for_s=0)])
    notes = a.evaluate({"memory_mb": 512.5}, 1_700_000_000.0)
    body = alerts.payload(notes)
    assert body["status"] == "firing" and body["version"] == "4"
    alert = body["alerts"][0]
    assert alert["labels"] == {"alertname": "OllamaMaxMemory", "rule": "memory",
                               "severity": "critical", "service": "ollamamax-gateway"}
    assert alert["value"] == 512.5 and alert["threshold"] == 500
    assert alert["startsAt"] == "2023-11-14T22:13:20.000Z" and alert["endsAt"] == alerts.NEVER
    assert "512.5 MB above 500 MB" in alert["annotations"]["summary"]
    json.dumps(body)


async def test_webhook_is_retried_with_backoff_then_delivered():
    answers = [OSError("refused"), 500, 204]
    sent, slept, results = [], [], []

    async def post(url, body, timeout):
        sent.append((url, json.loads(body)))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def sleep(s):
        slept.append(s)

    notifier = WebhookNotifier(["http://hook"], retries=3, backoff=0.5, post=post, sleep=sleep,
                               on_result=results.append)
    assert await notifier.deliver("http://hook", b'{"x": 1}')
    assert slept == [0.5, 1.0] and len(sent) == 3 and results == [True]


async def test_webhook_gives_up_after_its_retries(caplog):
    async def post(url, body, timeout):
        return 503

    async def sleep(s):
        pass

    results = []
    notifier = WebhookNotifier(["http://hook"], retries=2, post=post, sleep=sleep,
                               on_result=results.append)
    assert not await notifier.deliver("http://hook", b"{}")
    assert results == [False]
    assert "not delivered after 3 attempts: HTTP 503" in caplog.text


async def test_notify_logs_and_posts_in_the_background(caplog):
    got = asyncio.Event()
    bodies = []

    async def post(url, body, timeout):
        bodies.append(json.loads(body))
        got.set()
        return 200

    notifier = WebhookNotifier(["http://hook"], post=post)
    a = Alerts([rule(for_s=0)])
    notifier.notify(a.evaluate({"memory_mb": 350}, 10.0))
    await asyncio.wait_for(got.wait(), 5)
    await notifier.close()
    assert bodies[0]["alerts"][0]["labels"]["severity"] == "warning"
    assert "alert memory firing (warning)" in caplog.text


async def test_the_loop_evaluates_and_notifies_each_tick():
    a = Alerts([rule(for_s=0)])
    seen: list = []
    ticks = 0

    class Notifier:
        def notify(self, notes):
            seen.extend(notes)

    async def sleep(s):
        nonlocal ticks
        ticks += 1
        if ticks == 3:
            raise asyncio.CancelledError

    values = iter([350, 350, 100])
    with pytest.raises(asyncio.CancelledError):
        await alerts.run(a, lambda: {"memory_mb": next(values)}, Notifier(), 1.0,  # type: ignore[arg-type]
                         clock=lambda: 0.0, sleep=sleep)
    assert [n.status for n in seen] == ["firing", "resolved"]


def test_prometheus_export_has_both_levels_of_every_enabled_rule():
    yaml = pytest.importorskip("yaml")
    rules = rules_from({"cpu": {"enabled": False}, "memory": {"for": 90}})
    doc = yaml.safe_load(prometheus_rules(rules, window=60))
    exported = doc["groups"][0]["rules"]
    assert len(exported) == 2 * (len(rules) - 1)
    memory = [r for r in exported if r["labels"]["rule"] == "memory"]
    assert [(r["labels"]["severity"], r["for"]) for r in memory] == [("warning", "90s"),
                                                                       ("critical", "90s")]
    assert memory[0]["expr"].endswith("> 300") and memory[1]["expr"].endswith("> 500")
    assert all(r["alert"].startswith("OllamaMax") for r in exported)
    scheduling = next(r for r in exported if r["labels"]["rule"] == "scheduling_time")
    assert "[60s]" in scheduling["expr"] and "ollamamax_gateway_schedule_seconds_bucket" in scheduling["expr"]
    assert not any(r["labels"]["rule"] == "cpu" for r in exported)
