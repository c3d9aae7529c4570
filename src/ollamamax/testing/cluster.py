"""A local cluster of real processes for tests and benchmarks: N nodes and a gateway.

    with LocalCluster(tmp_path, engine="sim", nodes=3) as cluster:
        client = ollama.Client(host=cluster.url)
        cluster.kill("node-2")          # SIGKILL, like a machine that dies
        cluster.wait_nodes(healthy=2)   # polls /admin/nodes with a deadline
        cluster.pause("node-1"); cluster.resume("node-1")   # SIGSTOP / SIGCONT

With ``proxied=["node-1"]`` the gateway reaches node-1 through a fault proxy (its own
process, ``ollamamax testing faultproxy``): ``cluster.add_toxic("node-1", "latency:latency=300")``.

A gateway with API keys (``env={"OLLAMAMAX_SECURITY_KEYS_FILE": ...}``) needs an admin key for
the helpers that read ``/admin/*``: ``api_key=``, else ``OLLAMAMAX_API_KEY`` from `env` or this
process's environment. A refused key raises `GatewayRefused` with a sentence, at once.

Everything runs on 127.0.0.1 with OS-chosen ports, and everything started is stopped on exit.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ollamamax.cli.options import auth_headers, error_text, refusal
from ollamamax.models.store import ModelStore
from ollamamax.supervisor import Child, Supervisor

Prepare = Callable[[ModelStore], object]
# 127.0.0.1 is never reached through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
API_KEY_ENV = "OLLAMAMAX_API_KEY"


class GatewayRefused(RuntimeError):
    """The gateway answered 401 or 403: no key, a wrong one, or not an admin key."""


class LocalCluster:
    def __init__(self, run_dir: str | Path, *, engine: str = "sim", nodes: int = 2,
                 prepare: Prepare | None = None, node_args: Sequence[str] = (),
                 gateway_args: Sequence[str] = (), env: dict[str, str] | None = None,
                 proxied: Sequence[str] = (), api_key: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.engine = engine
        self.node_count = nodes
        self.prepare = prepare
        self.node_args = list(node_args)
        self.gateway_args = list(gateway_args)
        self.env = env
        self.proxied = list(proxied)
        self.proxy_apis: dict[str, str] = {}  # node name -> its fault proxy's control API
        if api_key is None:
            api_key = (env or {}).get(API_KEY_ENV) or os.environ.get(API_KEY_ENV, "")
        self.api_key = api_key  # sent to the gateway's admin endpoints; never shown
        self.supervisor = Supervisor(self.run_dir / "logs")
        self.url = ""

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> LocalCluster:
        try:
            children = [self._start_node(i) for i in range(1, self.node_count + 1)]
            backends = [f"{c.name}={self._proxy(c.name, self.supervisor.wait_ready(c))}"
                        for c in children]
            args = ["gateway", "--listen", "127.0.0.1:0", "--log-level", "info",
                    *[a for b in backends for a in ("--backend", b)], *self.gateway_args]
            gateway = self.supervisor.start("gateway", args, self.env)
            self.url = self.supervisor.wait_ready(gateway)
            self.wait_nodes(healthy=self.node_count)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.supervisor.stop_all()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _proxy(self, name: str, url: str) -> str:
        """The URL the gateway should use for node `name`: its own, or a fault proxy's."""
        if name not in self.proxied:
            return url
        child = self.supervisor.start(f"proxy-{name}", [
            "testing", "faultproxy", "--upstream", url, "--listen", "127.0.0.1:0",
            "--api", "127.0.0.1:0"], self.env)
        proxy_url = self.supervisor.wait_ready(child)
        self.proxy_apis[name] = json.loads(child.announce.read_text())["api"]
        return proxy_url

    def _start_node(self, i: int, port: int = 0) -> Child:
        store_dir = self.run_dir / f"node-{i}" / "models"
        if self.prepare is not None:
            self.prepare(ModelStore(store_dir))
        args = ["node", "--listen", f"127.0.0.1:{port}", "--id", f"node-{i}",
                "--engine", self.engine, "--models-dir", str(store_dir), *self.node_args]
        return self.supervisor.start(f"node-{i}", args, self.env)

    # -- faults ----------------------------------------------------------------------------

    def node(self, name: str) -> Child:
        return self.supervisor.children[name]

    def kill(self, name: str) -> None:
        """SIGKILL a node: no goodbye, like a machine losing power."""
        self.supervisor.signal(name, signal.SIGKILL)
        self.node(name).proc.wait(10)

    def restart(self, name: str) -> str:
        """Start a stopped or killed node again on the same port; returns its URL."""
        old = self.node(name)
        self.supervisor.stop(old)
        port = int(old.url.rpartition(":")[2])
        child = self._start_node(int(name.rpartition("-")[2]), port)
        return self.supervisor.wait_ready(child)

    def pause(self, name: str) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing, like a hung machine.
        `stop` sends SIGCONT first, so a paused node never outlives the cluster."""
        self.supervisor.signal(name, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.supervisor.signal(name, signal.SIGCONT)

    def add_toxic(self, name: str, spec: str) -> dict[str, Any]:
        """Add a toxic (``TYPE[@STREAM][:key=value,...]``) to node `name`'s fault proxy."""
        from ollamamax.testing.faultproxy import Toxic

        return self._proxy_call(name, "POST", "/toxics", Toxic.parse(spec).to_json())

    def clear_toxics(self, name: str) -> None:
        self._proxy_call(name, "DELETE", "/toxics")

    def _proxy_call(self, name: str, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.proxy_apis[name] + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with _DIRECT.open(request, timeout=5) as r:
            return json.loads(r.read())

    # -- observation -----------------------------------------------------------------------

    def get(self, path: str, timeout: float = 5.0) -> Any:
        """GET `path` from the gateway as JSON, with the API key if there is one."""
        request = urllib.request.Request(self.url + path, headers=auth_headers(self.api_key))
        try:
            with _DIRECT.open(request, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):  # waiting would not help: say so at once
                raise GatewayRefused(refusal(exc.code, self.url, bool(self.api_key),
                                             error_text(exc))) from None
            raise

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.get("/admin/nodes")["nodes"])

    def wait_nodes(self, *, healthy: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll until exactly `healthy` nodes are up in the gateway's view."""
        deadline = time.monotonic() + timeout
        nodes: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                nodes = self.nodes()
            except OSError:
                nodes = []
            if sum(1 for n in nodes if n["healthy"]) == healthy:
                return nodes
            time.sleep(0.05)
        raise TimeoutError(f"expected {healthy} healthy nodes within {timeout:g} s; saw {nodes}")

    def log(self, name: str) -> str:
        return self.node(name).log.read_text(errors="replace")
