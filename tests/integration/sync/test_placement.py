"""Placement end to end with real processes on a real etcd: a tiny GGUF imported on one node
(``ollamamax models import``) reaches the other nodes by itself after ``ollamamax models
replicate --replicas 4``, every copy verified (the same manifest digest, every blob hashing to
its name); ``models status`` shows it; the node whose engine is ``ollama`` installs it into the
"Ollama" behind it (a sim node) through ``/api/blobs`` and ``/api/create``."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from ollamamax.cli import _register, app
from ollamamax.errors import ModelNotFound
from ollamamax.models.store import ModelStore
from ollamamax.supervisor import Supervisor
from ollamamax.testing.etcd import LocalEtcd, missing_reason
from ollamamax.testing.tiny_gguf import write_tiny_gguf

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]

MODEL = "tiny:latest"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> Any:
    with _DIRECT.open(url, timeout=5) as reply:
        return json.loads(reply.read())


def tags(url: str) -> dict[str, str]:
    return {m["name"]: m["digest"] for m in get(url + "/api/tags")["models"]}


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    """``ollamamax ARGS`` in this process (a subprocess would spend seconds importing)."""
    if not app.registered_groups:
        _register()
    result = CliRunner().invoke(app, list(args), env={**(env or {}), "COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.output


def held(store: ModelStore) -> str | None:
    """The digest of the store's copy of the model, None while it has none."""
    try:
        return store.get(MODEL).digest
    except ModelNotFound:
        return None


def verified(store: ModelStore, digest: str) -> bool:
    """The store holds the model with this manifest digest and every blob hashes to its name."""
    model = store.get(MODEL)
    if model.digest != digest:
        return False
    for ref in [model.manifest["config"], *model.manifest["layers"]]:
        data = store.blob_path(ref["digest"]).read_bytes()
        if f"sha256:{hashlib.sha256(data).hexdigest()}" != ref["digest"]:
            return False
    return True


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    with LocalEtcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


def test_an_imported_model_reaches_every_node_and_the_ollama_behind_one(etcd, tmp_path) -> None:
    endpoints = ",".join(etcd.urls)
    env = {"OLLAMAMAX_CLUSTER_LEASE_TTL": "2", "OLLAMAMAX_CLUSTER_PREFIX": "placement/",
           "OLLAMAMAX_CLUSTER_TELEMETRY_INTERVAL": "0.5", "OLLAMAMAX_SYNC_PLAN_INTERVAL": "0.2",
           "OLLAMAMAX_SYNC_SCAN_INTERVAL": "0.2"}
    stores = {f"node-{i}": tmp_path / f"node-{i}" for i in range(1, 5)}
    with Supervisor(tmp_path / "logs") as sup:
        def start(name: str, *engine: str) -> Any:
            return sup.start(name, ["node", "--listen", "127.0.0.1:0", "--id", name, *engine,
                                    "--models-dir", str(stores[name]), "--etcd", endpoints], env)

        sim = ("--engine", "sim", "--sim-profile", "instant")
        ollama = sup.start("ollama", ["node", "--listen", "127.0.0.1:0", "--id", "ollama", *sim,
                                      "--models-dir", str(tmp_path / "ollama")])
        children = [start(f"node-{i}", *sim) for i in (1, 2, 3)]
        ollama_url = sup.wait_ready(ollama)  # the stock Ollama behind node-4
        children.append(start("node-4", "--engine", "ollama", "--engine-url", ollama_url))
        urls = dict(zip(stores, (sup.wait_ready(c) for c in children), strict=True))

        gguf = write_tiny_gguf(tmp_path / "tiny.gguf", seed=7)
        cli("models", "import", str(gguf), "--name", MODEL, "--models-dir",
            str(stores["node-1"]))
        digest = ModelStore(stores["node-1"]).get(MODEL).digest
        said = cli("models", "replicate", MODEL, "--replicas", "4", "--etcd", endpoints,
                   env=env)
        assert "4 replica(s)" in said

        for name in ("node-2", "node-3"):
            wait_for(lambda name=name: tags(urls[name]).get(MODEL) == digest, 30,
                     f"{MODEL} on {name}")
        # the ollama-engine node's own store gets its copy too (replicas 4): wait for it
        wait_for(lambda: held(ModelStore(stores["node-4"])) == digest, 30, f"{MODEL} on node-4")
        for name, store in stores.items():
            assert verified(ModelStore(store), digest), name
        wait_for(lambda: MODEL in tags(ollama_url), 30, f"{MODEL} installed into the Ollama")
        ollama_model = ModelStore(tmp_path / "ollama").get(MODEL)
        assert ollama_model.model_layer["digest"] == \
            ModelStore(stores["node-1"]).get(MODEL).model_layer["digest"]

        def status_with_every_holder() -> str:
            out = cli("models", "status", "--etcd", endpoints, env=env)
            return out if "node-4" in out else ""

        status = wait_for(status_with_every_holder, 15, "models status lists every holder")
        line = next(row for row in status.splitlines() if MODEL in row)
        assert digest[:12] in line and all(n in line for n in stores), status
        logs = "".join(c.log.read_text(errors="replace") for c in sup.children.values())
    assert "unexpected error" not in logs.lower(), logs[-3000:]
