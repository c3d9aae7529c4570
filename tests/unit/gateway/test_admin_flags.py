"""The gateway's flag admin API: list, set, roll back, bad input, and restarts."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ollamamax import config, variants
from ollamamax.gateway.app import Gateway
from ollamamax.scheduler.baselines import ListHistory
from ollamamax.scheduler.history import TaskHistory

# a node nobody listens on: health checks fail fast, the admin API does not care
BACKEND = "n1=http://127.0.0.1:9"


def gateway(flags_file: str = "") -> Gateway:
    return Gateway(config.load(env={}, overrides={
        "gateway.backends": (BACKEND,), "gateway.flags_file": flags_file or None}))


@pytest.fixture
async def gw():
    return gateway()


@pytest.fixture
async def client(gw):
    async with TestClient(TestServer(gw.app())) as c:
        yield c


async def test_list_shows_every_flag_with_its_setting(client):
    r = await client.get("/admin/flags")
    assert r.status == 200
    flags = {f["name"]: f for f in (await r.json())["flags"]}
    assert set(flags) == {variants.STRATEGY, *(p.flag for p in variants.PAIRS)}
    s = flags[variants.STRATEGY]
    assert s["variant"] == s["default"] == "intelligent" and s["percent"] == 100
    assert "round_robin" in s["variants"] and s["history"] == [] and s["served"] == {}


async def test_set_then_rollback(client):
    r = await client.put(f"/admin/flags/{variants.STRATEGY}",
                         json={"variant": "round_robin", "percent": 25})
    assert r.status == 200
    body = await r.json()
    assert (body["variant"], body["percent"], body["base"]) == ("round_robin", 25, "intelligent")
    health = await (await client.get("/health")).json()
    assert health["strategy"] == "intelligent (round_robin for 25%)"
    r = await client.put(f"/admin/flags/{variants.STRATEGY}", json={"variant": "least_busy"})
    assert (await r.json())["percent"] == 100  # the default share
    r = await client.post(f"/admin/flags/{variants.STRATEGY}/rollback")
    assert r.status == 200 and (await r.json())["variant"] == "round_robin"


async def test_component_flags_switch_the_gateways_parts(client, gw):
    r = await client.put(f"/admin/flags/{variants.QUEUE_ORDER}", json={"variant": "sorted_list"})
    assert r.status == 200 and gw.router.queue.order == "sorted_list"
    r = await client.put(f"/admin/flags/{variants.HISTORY}", json={"variant": "list"})
    assert r.status == 200 and isinstance(gw.view.history, ListHistory)
    r = await client.post(f"/admin/flags/{variants.QUEUE_ORDER}/rollback")
    assert r.status == 200 and gw.router.queue.order == "heap"


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), [
    ("PUT", "/admin/flags/nope", {"variant": "x"}, 404, "unknown flag 'nope'"),
    ("PUT", f"/admin/flags/{variants.STRATEGY}", {"variant": "fastest"}, 400, "no variant"),
    ("PUT", f"/admin/flags/{variants.STRATEGY}", {"variant": "p2c", "percent": 150}, 400,
     "from 0 to 100"),
    ("PUT", f"/admin/flags/{variants.STRATEGY}", {"variant": "p2c", "percent": "all"}, 400,
     "expected a JSON object"),
    ("PUT", f"/admin/flags/{variants.STRATEGY}", {"percent": 5}, 400, "expected a JSON object"),
    ("PUT", f"/admin/flags/{variants.STRATEGY}", {"variant": "p2c", "colour": 1}, 400,
     "expected a JSON object"),
    ("PUT", f"/admin/flags/{variants.STRATEGY}", "not json", 400, "expected a JSON object"),
    ("PUT", f"/admin/flags/{variants.QUEUE_ORDER}", {"variant": "sorted_list", "percent": 50},
     400, "whole component"),
    ("POST", f"/admin/flags/{variants.STRATEGY}/rollback", None, 409, "no earlier setting"),
    ("POST", "/admin/flags/nope/rollback", None, 404, "unknown flag"),
    ("DELETE", f"/admin/flags/{variants.STRATEGY}", None, 405, "not allowed"),
])
async def test_bad_input_is_a_4xx_in_ollamas_error_shape(client, method, path, body, status,
                                                        words):
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    r = await client.request(method, path, **kwargs)
    assert r.status == status
    error = (await r.json())["error"]
    assert words in error


async def test_the_metric_is_exported(client):
    text = await (await client.get("/metrics")).text()
    assert "# TYPE ollamamax_flag_requests_total counter" in text


def test_flags_and_their_effects_survive_a_gateway_restart(tmp_path):
    path = str(tmp_path / "flags.json")
    first = gateway(path)
    first.flags.set(variants.STRATEGY, "p2c", 40)
    first.flags.set(variants.QUEUE_ORDER, "sorted_list")
    first.flags.set(variants.HISTORY, "list")
    assert first.router.queue.order == "sorted_list"
    assert isinstance(first.view.history, ListHistory)
    second = gateway(path)  # a restarted gateway
    assert second.scheduler.name == "intelligent (p2c for 40%)"
    assert second.router.queue.order == "sorted_list"
    assert isinstance(second.view.history, ListHistory)
    second.flags.rollback(variants.HISTORY)
    assert isinstance(second.view.history, TaskHistory)
    third = gateway(path)
    assert isinstance(third.view.history, TaskHistory)
    assert third.flags[variants.STRATEGY].setting.variant == "p2c"
