"""Request ids: accepted or made, echoed on answers, and in every log line of a request."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ollamamax import logs
from ollamamax.observability import request_ids

log = logging.getLogger("ollamamax.test")


def test_accept_keeps_a_usable_id_and_replaces_others():
    assert request_ids.accept("trace-1.a:b/c") == "trace-1.a:b/c"
    for bad in (None, "", "with space", "x" * 129, "line\r\nbreak", "é"):
        made = request_ids.accept(bad)
        assert made != bad and len(made) == 16


async def test_answers_echo_the_id_and_log_lines_carry_it(caplog):
    async def hello(request: web.Request) -> web.Response:
        log.warning("serving")
        return web.Response(text=request_ids.of(request))

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"x")
        return response

    app = web.Application(middlewares=[request_ids.middleware])
    app.router.add_get("/", hello)
    app.router.add_get("/stream", streamed)
    request_ids.install(app)
    async with TestClient(TestServer(app)) as client:
        reply = await client.get("/", headers={"X-Request-Id": "abc-1"})
        assert reply.headers["X-Request-Id"] == "abc-1" and await reply.text() == "abc-1"
        made = await client.get("/stream")
        assert len(made.headers["X-Request-Id"]) == 16
    formatted = logs.JsonFormatter().format
    records = [r for r in caplog.records if r.msg == "serving"]
    assert records
    token = logs.request_id.set("abc-1")
    try:
        assert json.loads(formatted(records[0]))["request_id"] == "abc-1"
        text = logs.TextFormatter("%(name)s%(rid)s: %(message)s").format(records[0])
        assert text == "ollamamax.test [abc-1]: serving"
    finally:
        logs.request_id.reset(token)
    assert "request_id" not in json.loads(formatted(records[0]))
    assert logs.TextFormatter("%(name)s%(rid)s: %(message)s").format(records[0]) == \
        "ollamamax.test: serving"
