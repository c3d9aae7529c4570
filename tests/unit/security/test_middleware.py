"""The gateway's key check in process: who gets in where, the dashboard cookie, reloads."""

from __future__ import annotations

import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ollamamax import config
from ollamamax.gateway.app import Gateway
from ollamamax.security import keys
from ollamamax.security.middleware import COOKIE, Guard, bearer, needs, open_warning

BACKEND = "n1=http://127.0.0.1:9"  # nobody listens: the checks here come before any node


def gateway(keys_file, **more) -> Gateway:
    return Gateway(config.load(env={}, overrides={
        "gateway.backends": (BACKEND,), "security.keys_file": str(keys_file), **more}))


@pytest.fixture
def keyring(tmp_path):
    path = tmp_path / "keys.json"
    return path, keys.add(path, "alice", "user"), keys.add(path, "root", "admin")


@pytest.fixture
async def client(keyring):
    async with TestClient(TestServer(gateway(keyring[0]).app())) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_paths_are_classified():
    assert needs("/") == needs("/health") == "open"
    assert needs("/api/chat") == needs("/v1/models") == needs("/api/version") == "user"
    for path in ("/admin/nodes", "/admin/flags/x", "/dashboard", "/dashboard/events", "/metrics",
                 "/api/pull", "/api/delete"):
        assert needs(path) == "admin"
    assert needs("/metrics", open_metrics=True) == "open"
    assert bearer("Bearer  abc ") == bearer("bearer abc") == "abc"
    assert bearer("Basic abc") == bearer("") == ""


async def test_no_key_is_401_in_ollamas_shape_with_www_authenticate(client):
    for path in ("/api/tags", "/admin/nodes", "/dashboard", "/metrics"):
        r = await client.get(path)
        assert r.status == 401, path
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert (await r.json()) == {"error": "an API key is required: send "
                                             "'Authorization: Bearer <key>'"}
    r = await client.get("/v1/models")  # the OpenAI paths answer OpenAI's shape
    assert r.status == 401 and (await r.json())["error"]["type"] == "authentication_error"


async def test_a_wrong_key_is_401_and_is_never_echoed(client, keyring):
    wrong = keyring[1] + "x"
    for headers in (auth(wrong), {"Authorization": keyring[1]}, {"Authorization": "Basic x"}):
        r = await client.post("/api/chat", json={"model": "m"}, headers=headers)
        assert r.status == 401
        assert wrong not in await r.text()


async def test_user_keys_use_the_apis_and_admin_keys_everything(client, keyring):
    _, user, admin = keyring
    assert (await client.get("/api/version", headers=auth(user))).status == 200
    assert (await client.get("/api/tags", headers=auth(admin))).status == 200
    for path in ("/admin/nodes", "/admin/flags", "/admin/status", "/metrics", "/dashboard"):
        r = await client.get(path, headers=auth(user))
        assert r.status == 403, path
        assert "admin key" in (await r.json())["error"]
        assert (await client.get(path, headers=auth(admin))).status == 200, path
    r = await client.put("/admin/flags/scheduler.strategy", json={"variant": "round_robin"},
                         headers=auth(user))
    assert r.status == 403


async def test_health_and_root_stay_open(client):
    assert (await client.get("/health")).status == 200
    assert (await client.get("/")).status == 200


async def test_the_dashboard_keeps_the_key_in_a_cookie(client, keyring):
    _, user, admin = keyring
    r = await client.get(f"/dashboard?key={admin}", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/dashboard"
    cookie = r.cookies[COOKIE]
    assert cookie.value == admin and cookie["httponly"] and cookie["samesite"] == "Strict"
    assert (await client.get("/dashboard")).status == 200  # the cookie jar sends it now
    assert (await client.get("/admin/status")).status == 200
    r = await client.put("/admin/flags/scheduler.strategy", json={"variant": "round_robin"})
    assert r.status == 401  # a cookie is never enough to change anything
    r = await client.get("/dashboard?key=omx_wrong", allow_redirects=False)
    assert r.status == 401 and COOKIE not in r.cookies  # never remembered unchecked
    client.session.cookie_jar.clear()
    assert (await client.get(f"/dashboard?key={user}")).status == 403
    assert (await client.get(f"/api/tags?key={admin}")).status == 401  # ?key= is for the page


async def test_keys_added_and_revoked_apply_on_reload(keyring):
    path, user, _ = keyring
    gw = gateway(path)
    async with TestClient(TestServer(gw.app())) as client:
        keys.revoke(path, "alice")
        assert gw.guard.reload()
        assert (await client.get("/api/tags", headers=auth(user))).status == 401
        fresh = keys.add(path, "carol")
        gw.guard.reload()
        assert (await client.get("/api/tags", headers=auth(fresh))).status == 200


async def test_an_empty_keys_file_leaves_the_gateway_open_and_no_file_adds_nothing(tmp_path):
    gw = gateway(tmp_path / "none-yet.json")
    assert gw.guard is not None and not gw.guard.active
    async with TestClient(TestServer(gw.app())) as client:
        assert (await client.get("/admin/nodes")).status == 200
        keys.add(tmp_path / "none-yet.json", "alice")
        gw.guard.reload()
        assert (await client.get("/admin/nodes")).status == 401
    plain = Gateway(config.load(env={}, overrides={"gateway.backends": (BACKEND,)}))
    assert plain.guard is None
    assert not any(isinstance(getattr(m, "__self__", None), Guard)
                   for m in plain.app().middlewares)
    assert any(isinstance(getattr(m, "__self__", None), Guard) for m in gw.app().middlewares)


async def test_open_metrics(keyring):
    gw = gateway(keyring[0], **{"security.open_metrics": True})
    async with TestClient(TestServer(gw.app())) as client:
        assert (await client.get("/metrics")).status == 200
        assert (await client.get("/admin/nodes")).status == 401


async def test_rate_limited_keys_get_429_with_retry_after(tmp_path):
    path = tmp_path / "keys.json"
    key = keys.add(path, "slow", rps=0.01, burst=1)
    async with TestClient(TestServer(gateway(path).app())) as client:
        assert (await client.get("/api/tags", headers=auth(key))).status == 200
        r = await client.get("/api/tags", headers=auth(key))
        assert r.status == 429 and 90 <= int(r.headers["Retry-After"]) <= 100
        assert "rate of 0.01 requests per second" in (await r.json())["error"]


async def test_a_world_readable_keys_file_is_warned_about(keyring, caplog):
    keyring[0].chmod(0o644)
    with caplog.at_level(logging.WARNING):
        Guard(config.load(env={}, overrides={"security.keys_file": str(keyring[0])}).security)
    assert "readable by others" in caplog.text


def test_an_open_gateway_on_the_network_is_warned_about(keyring):
    assert "anyone who can reach it" in open_warning("0.0.0.0:11434", None)
    assert open_warning("127.0.0.1:11434", None) == ""
    guarded = Guard(config.load(env={}, overrides={
        "security.keys_file": str(keyring[0])}).security)
    assert open_warning("0.0.0.0:11434", guarded) == ""


async def test_the_keys_name_is_its_identity_in_the_queue_and_answers_are_charged(tmp_path,
                                                                                 monkeypatch):
    path = tmp_path / "keys.json"
    key = keys.add(path, "metered", tokens_per_min=60)
    gw = gateway(path)
    seen = []

    async def forward(request, route, model, path, body, adapter):  # instead of a node
        seen.append(route.key)
        return adapter.whole(200, b'{"done":true,"prompt_eval_count":50,"eval_count":20}')

    monkeypatch.setattr(gw.path, "forward", forward)
    async with TestClient(TestServer(gw.app())) as client:
        r = await client.post("/api/generate", json={"model": "m:1b", "prompt": "hi"},
                              headers=auth(key))
        assert r.status == 200 and seen == ["metered"]
        r = await client.post("/v1/completions", json={"model": "m:1b", "prompt": "hi"},
                              headers=auth(key))
        # 70 - 60 = 10 tokens in debt at 1 token/s: 11 s until one is available (less what
        # refilled between the two requests)
        assert r.status == 429 and r.headers["Retry-After"] in ("10", "11")
        assert (await r.json())["error"]["type"] == "rate_limit_error"
