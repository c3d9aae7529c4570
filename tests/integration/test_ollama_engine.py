"""The `ollama` engine: a node in front of a stock Ollama server.

No Ollama binary runs here, so the stock server is played by a `sim` node, which answers the
Ollama API as Ollama does; the node under test only knows it as an Ollama URL.
"""

from __future__ import annotations

import httpx
import ollama
import pytest

from ollamamax.supervisor import Supervisor

MODEL = "stock:7b"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    run = tmp_path_factory.mktemp("ollama-engine")
    with Supervisor(run / "logs") as sup:
        stock = sup.start("stock", ["node", "--engine", "sim", "--listen", "127.0.0.1:0",
                                    "--sim-profile", "instant", "--sim-model", f"{MODEL}=5000",
                                    "--models-dir", str(run / "stock")])
        stock_url = sup.wait_ready(stock)
        agent = sup.start("agent", ["node", "--engine", "ollama", "--engine-url", stock_url,
                                    "--listen", "127.0.0.1:0", "--id", "agent"])
        agent_url = sup.wait_ready(agent)
        gateway = sup.start("gateway", ["gateway", "--listen", "127.0.0.1:0",
                                        "--backend", f"agent={agent_url}"])
        yield sup.wait_ready(gateway), agent_url


def test_requests_flow_through_to_the_stock_server(chain):
    url, _ = chain
    with ollama.Client(host=url, timeout=30) as client:
        assert [m.model for m in client.list().models] == [MODEL]
        whole = client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                            options={"num_predict": 5})
        assert whole.done and whole.eval_count == 5
        parts = list(client.generate(model=MODEL, prompt="hi", options={"num_predict": 5},
                                     stream=True))
        assert parts[-1].done and len(parts) == 6
        assert len(client.embed(model=MODEL, input=["a", "b"]).embeddings) == 2
        assert client.show(MODEL).details is not None
        assert [m.model for m in client.ps().models] == [MODEL]


def test_agent_reports_what_the_stock_server_has_loaded(chain):
    url, agent_url = chain
    with ollama.Client(host=url, timeout=30) as client:
        client.generate(model=MODEL, prompt="", keep_alive="5m")
    tele = httpx.get(agent_url + "/telemetry").json()
    assert tele["engine"] == "ollama"
    assert [m["name"] for m in tele["models"]] == [MODEL]
    assert [m["name"] for m in tele["loaded"]] == [MODEL]


def test_errors_keep_their_status(chain):
    _, agent_url = chain
    r = httpx.post(agent_url + "/api/chat", json={"model": "nope:1b", "messages": []})
    assert r.status_code == 404 and "not found" in r.json()["error"]
