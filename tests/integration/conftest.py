"""Clusters of real processes on 127.0.0.1, shared by the tests of one module."""

from __future__ import annotations

import pytest

from ollamamax.testing.cluster import LocalCluster
from ollamamax.testing.tiny_gguf import import_tiny_model

TINY = "tiny:latest"
SIM_MODEL = "simmodel:7b"


def tiny_store(store) -> None:
    import_tiny_model(store.root, name=TINY)


def start_cluster(tmp_path_factory, engine: str, **kwargs) -> LocalCluster:
    run_dir = tmp_path_factory.mktemp(f"{engine}-cluster")
    if engine == "llamacpp":
        return LocalCluster(run_dir, engine="llamacpp", nodes=2, prepare=tiny_store,
                            **kwargs).start()
    return LocalCluster(run_dir, engine="sim", nodes=2, node_args=[
        "--sim-profile", "cpu-small", "--sim-speed", "50",
        "--sim-model", f"{SIM_MODEL}=4000000000"], **kwargs).start()


@pytest.fixture(scope="module", params=["llamacpp", "sim"])
def cluster(request, tmp_path_factory):
    """A gateway over two nodes of each engine (tiny random model / simulated model)."""
    c = start_cluster(tmp_path_factory, request.param)
    c.model = TINY if request.param == "llamacpp" else SIM_MODEL
    yield c
    c.stop()
