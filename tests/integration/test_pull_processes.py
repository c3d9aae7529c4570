"""Real processes: `ollamamax models pull` killed -9 mid-blob and run again; `ollamamax testing
registry` behind a gateway whose /api/pull puts the model on one node (official client)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import httpx
import ollama
import pytest

from ollamamax.models.store import ModelStore
from ollamamax.supervisor import Supervisor
from ollamamax.testing.cluster import LocalCluster
from ollamamax.testing.registry import LocalRegistry
from ollamamax.testing.tiny_gguf import import_tiny_model

pytestmark = pytest.mark.slow


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ollamamax", *args]


def _kept(store: ModelStore) -> dict[str, int]:
    """Bytes the partial area's sidecars count as on disk, by digest."""
    kept = {}
    for path in store.partial.glob("*.json"):
        try:
            state = json.loads(path.read_bytes())
        except ValueError:
            continue  # being replaced right now
        kept[state["digest"]] = sum(part[2] for part in state["parts"])
    return kept


async def test_a_pull_killed_mid_blob_fetches_only_the_missing_bytes_next_time(tmp_path):
    model = import_tiny_model(tmp_path / "origin", name="tiny:latest")
    total = model.size
    layer = model.model_layer["digest"]
    store = ModelStore(tmp_path / "node")
    pull = _cli("models", "pull", "tiny", "--models-dir", str(store.root))
    async with LocalRegistry(tmp_path / "origin") as registry:
        registry.stall_after = 200_000  # the answer hangs after 200 kB: the pull is mid-blob
        proc = await asyncio.create_subprocess_exec(*pull, "--registry", registry.url,
                                                    stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not (registry.stall_after is None and
                       sum(_kept(store).values()) == registry.bytes_served):
                assert time.monotonic() < deadline, f"no checkpoint of the stalled pull: {_kept(store)}"
                await asyncio.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        kept = sum(_kept(store).values())
        assert abs(kept - 200_000) <= 300  # the config blob (261 B) may come before or after
        assert not store.has_blob(layer) and store.list() == []  # nothing Ollama would read

        registry.reset_counters()
        again = await asyncio.create_subprocess_exec(*pull, "--registry", registry.url,
                                                     stdout=subprocess.PIPE,
                                                     stderr=subprocess.PIPE)
        out, err = await again.communicate()
        assert again.returncode == 0, err.decode()
        assert registry.bytes_served == total - kept  # not one byte twice
    assert "success" in out.decode()
    assert store.get("tiny").digest == model.digest and store.verify() == []
    assert not list(store.partial.glob("*.part"))


@pytest.fixture(scope="module")
def registry_process(tmp_path_factory):
    """`ollamamax testing registry` serving tiny:latest, blobs redirected as by the real one."""
    run = tmp_path_factory.mktemp("registry")
    model = import_tiny_model(run / "origin", name="tiny:latest")
    with Supervisor(run / "logs") as supervisor:
        child = supervisor.start("registry", ["testing", "registry", "--dir", str(run / "origin"),
                                              "--redirect"])
        yield supervisor.wait_ready(child), model


def test_the_gateway_pulls_a_model_into_one_node(registry_process, tmp_path):
    url, model = registry_process
    with LocalCluster(tmp_path, engine="sim", nodes=2,
                      node_args=["--sim-profile", "instant"],
                      env={"OLLAMAMAX_SYNC_REGISTRY": url}) as cluster, \
            ollama.Client(host=cluster.url) as client:
        progress = list(client.pull("tiny", stream=True))
        first, last = progress[0].status, progress[-1].status
        assert first.startswith("pulling into node node-") and last == "success"
        chosen = first.rpartition(" ")[2]
        other = "node-2" if chosen == "node-1" else "node-1"
        assert ModelStore(tmp_path / chosen / "models").get("tiny").digest == model.digest
        assert ModelStore(tmp_path / other / "models").list() == []  # pulled once, into one

        deadline = time.monotonic() + 15  # the gateway learns of it from the node's telemetry
        while "tiny:latest" not in [m.model for m in client.list().models]:
            assert time.monotonic() < deadline, "the gateway never listed the pulled model"
            time.sleep(0.1)

        reply = httpx.post(cluster.url + "/api/pull", json={"model": "tiny", "stream": False},
                           timeout=30)
        assert reply.status_code == 200 and reply.json() == {"status": "success"}
        assert reply.headers["X-OllamaMax-Node"] in ("node-1", "node-2")
        with pytest.raises(ollama.ResponseError, match="file does not exist") as missing:
            client.pull("nothing-here", stream=False)
        assert missing.value.status_code == 404
        bad = httpx.post(cluster.url + "/api/pull", json={"model": "../../etc"}, timeout=10)
        assert bad.status_code == 400 and "invalid model name" in bad.json()["error"]


def test_the_cli_says_what_went_wrong_without_a_traceback(registry_process, tmp_path):
    url, _ = registry_process
    cases = [
        (["nothing-here", "--registry", url], "pull model manifest: file does not exist"),
        (["tiny", "--registry", "http://127.0.0.1:1"], "cannot reach http://127.0.0.1:1"),
        (["../../etc/passwd", "--registry", url], "invalid model name"),
    ]
    procs = [subprocess.Popen(_cli("models", "pull", *args, "--models-dir", str(tmp_path)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args, _ in cases]  # at once: three interpreter starts cost one
    for proc, (_, words) in zip(procs, cases, strict=True):
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err
        assert words in " ".join(err.split()) and "Traceback" not in err
