"""Rigs for the bad-input fuzz tests (docs/resilience.md, "Bad input").

A node agent (the `sim` engine, or `llamacpp` with the tiny GGUF) and a gateway over it run in
an event loop of their own thread, listening on 127.0.0.1 with port 0, so hypothesis' plain
synchronous tests reach them over real sockets with an HTTP client, as any client would.

`Rig.refused` is the property every bad input must have: a 4xx whose body is Ollama's
``{"error": "<sentence>"}`` (OpenAI's ``{"error": {"message", "type", "param", "code"}}`` on
/v1), no traceback or Python repr. `Rig.assert_unharmed` is the other half: the background
tasks still turn, nothing was logged as an unexpected error, and a good request answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ollamamax import config
from ollamamax.config import NodeConfig
from ollamamax.gateway.app import Gateway
from ollamamax.node import engines
from ollamamax.node.agent import NodeAgent
from ollamamax.server import start_site

MODEL = "m:1b"
MAX_BODY = 4 << 20  # room for the 10**6-character strings, still a cap
# What a response must never show: a traceback, a Python object's repr, a class name.
LEAKS = ("Traceback", 'File "', "object at 0x", "<class ", "<built-in", "NoneType")


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Rig:
    """A node (and, for `sim`, a gateway over it) served from a background event loop."""

    def __init__(self, models_dir: str, engine: str) -> None:
        self.models_dir = models_dir
        self.engine = engine
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[str] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx["message"]))
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-rig", daemon=True)
        self.runners: list[Any] = []
        self.log = _Captured()
        self.url = self.node_url = ""
        self.background: list[asyncio.Task[Any]] = []

    def _run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> Rig:
        logging.getLogger("ollamamax").addHandler(self.log)
        self.thread.start()
        self._run(self._start())
        return self

    async def _start(self) -> None:
        if self.engine == "llamacpp":
            conf = NodeConfig(engine="llamacpp", models_dir=self.models_dir, num_ctx=256,
                              threads=1, id="fuzz-node")
        else:
            conf = NodeConfig(engine="sim", models_dir=self.models_dir, sim_profile="instant",
                              sim_models=(f"{MODEL}=1000",), id="fuzz-node")
        runner, self.node_url = await start_site(NodeAgent(conf, engines.create(conf)).app(),
                                                 "127.0.0.1:0", 5)
        self.runners.append(runner)
        if self.engine == "sim":
            gateway = Gateway(config.load(env={}, overrides={
                "gateway.backends": (f"fuzz-node={self.node_url}",),
                "gateway.max_body_bytes": MAX_BODY}))
            runner, self.url = await start_site(gateway.app(), "127.0.0.1:0", 5)
            self.runners.append(runner)
        # the long-lived loops (health checks, monitor) have names; one-off tasks do not
        self.background = [task for task in asyncio.all_tasks()
                           if not task.get_name().startswith("Task-")]

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in reversed(self.runners):
                await runner.cleanup()

        try:
            self._run(cleanup())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
            logging.getLogger("ollamamax").removeHandler(self.log)

    # -- the property --------------------------------------------------------------------

    @staticmethod
    def refused(response: httpx.Response, openai: bool = False) -> str:
        """Assert `response` is a 4xx in the API's error shape; return the sentence."""
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
        return Rig.error_sentence(response, openai)

    @staticmethod
    def error_sentence(response: httpx.Response, openai: bool = False) -> str:
        assert response.headers["content-type"].startswith("application/json"), response.headers
        text = response.text
        for leak in LEAKS:
            assert leak not in text, text[:500]
        body = json.loads(text)
        assert isinstance(body, dict), text[:500]
        if openai:
            assert set(body) == {"error"} and isinstance(body["error"], dict), text[:500]
            error = body["error"]
            assert set(error) == {"message", "type", "param", "code"}, text[:500]
            assert isinstance(error["type"], str) and error["type"], text[:500]
            message = error["message"]
        else:
            assert set(body) == {"error"}, text[:500]
            message = body["error"]
        assert isinstance(message, str) and message.strip(), text[:500]
        return message

    @staticmethod
    def not_5xx(response: httpx.Response, openai: bool = False) -> None:
        """For input that may or may not be valid: an answer, or a proper refusal."""
        assert response.status_code < 500, (response.status_code, response.text[:500])
        if response.status_code >= 400:
            Rig.error_sentence(response, openai)

    def assert_unharmed(self, client: httpx.Client) -> None:
        """Background loops alive, nothing unexpected logged, and a good request answers."""
        assert self.background or self.engine != "sim", "no background task found to watch"
        dead = [task.get_name() for task in self.background if task.done()]
        assert not dead, f"background tasks ended: {dead}"
        assert not self.loop_errors, self.loop_errors
        unexpected = [r.getMessage() for r in self.log.records]
        self.log.records.clear()  # reported once, where it was seen
        assert not unexpected, unexpected
        good = client.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False})
        assert good.status_code == 200 and good.json()["done"] is True, good.text[:500]


@pytest.fixture(scope="module")
def sim_rig(tmp_path_factory) -> Iterator[Rig]:
    rig = Rig(str(tmp_path_factory.mktemp("fuzz-sim")), "sim").start()
    yield rig
    rig.stop()


@pytest.fixture(scope="module")
def llama_rig(tmp_path_factory) -> Iterator[Rig]:
    """A node alone over the `llamacpp` engine and the tiny random-weight GGUF."""
    from ollamamax.testing.tiny_gguf import import_tiny_model

    models = tmp_path_factory.mktemp("fuzz-llamacpp")
    import_tiny_model(models, name=MODEL)
    rig = Rig(str(models), "llamacpp").start()
    yield rig
    rig.stop()


@pytest.fixture(scope="module")
def gateway(sim_rig: Rig) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim_rig.url, timeout=30) as client:
        yield client
        sim_rig.assert_unharmed(client)


@pytest.fixture(scope="module")
def node(sim_rig: Rig) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim_rig.node_url, timeout=30) as client:
        yield client
        sim_rig.assert_unharmed(client)
