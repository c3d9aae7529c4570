"""Real etcd processes on this machine, for ``ollamamax up --cluster``, benchmarks and tests:
one member, or a static cluster of several.

    with LocalEtcd(tmp_path) as etcd:              # one member
        store = EtcdStore(etcd.urls)
        etcd.restart()                             # SIGTERM, then the same ports and data dir
    with LocalEtcd(tmp_path, members=3) as etcd:
        etcd.kill(0)                               # SIGKILL one; the other two keep a quorum
        etcd.restart(0)

Every member listens on 127.0.0.1 on ports found free, with short raft timeouts (heartbeat
50 ms, election 500 ms) so a leader is elected well within a second and leases may be as short
as 1 s. The binary is Debian's ``etcd`` (package ``etcd-server``, 3.4); `missing_reason()`
says why tests must skip where it is absent. A system etcd on the default ports is neither
used nor disturbed. ``ollamamax up --cluster`` passes `extra_args` to turn on automatic
compaction, which a long-running member needs (every telemetry write is kept otherwise).

Members are the supervisor's children: a member is stopped with SIGTERM, then SIGKILL, and
every member dies with its parent (PR_SET_PDEATHSIG). Linux ties that to the *thread* that
started it: start and restart members from the main thread, not from ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from ollamamax.supervisor import Child, StartError, Supervisor, die_with_parent

ETCD_BINARY = "etcd"
RAFT_ARGS = ["--heartbeat-interval", "50", "--election-timeout", "500"]
START_ATTEMPTS = 3  # a port found free can be taken before etcd binds it: pick others


def missing_reason() -> str | None:
    """Why etcd tests cannot run here, or None."""
    if shutil.which(ETCD_BINARY) is None:
        return ("the etcd binary is not installed (Debian: apt-get install etcd-server; "
                "./dev.sh test and ./dev.sh up --cluster install it)")
    return None


@dataclass(frozen=True)
class EtcdTLS:
    """Serve clients over TLS and require client certificates signed by `ca_file`. The
    client pair is what the harness itself presents to check health."""

    ca_file: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        context.load_cert_chain(self.client_cert, self.client_key)
        return context


@dataclass
class Member:
    name: str
    data_dir: Path
    client_port: int = 0
    peer_port: int = 0


class LocalEtcd:
    def __init__(self, run_dir: str | os.PathLike[str], *, members: int = 1,
                 tls: EtcdTLS | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.run_dir = Path(run_dir)
        self.tls = tls
        self.extra_args = list(extra_args)
        self.members = [Member(f"etcd-{i}", self.run_dir / f"etcd-{i}.data")
                        for i in range(members)]
        self.supervisor = Supervisor(self.run_dir / "logs")
        self._token = f"ollamamax-{uuid.uuid4().hex[:8]}"

    @property
    def urls(self) -> list[str]:
        """The client URL of every member, in order."""
        scheme = "https" if self.tls else "http"
        return [f"{scheme}://127.0.0.1:{m.client_port}" for m in self.members]

    @property
    def url(self) -> str:
        return self.urls[0]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> LocalEtcd:
        """Start every member on new ports and wait until all are healthy."""
        attempt = 1
        while True:
            self._pick_ports()
            for i in range(len(self.members)):
                self._spawn(i)
            try:
                for i in range(len(self.members)):
                    self.wait_healthy(i, timeout)
                return self
            except StartError as exc:
                self.stop()
                if attempt == START_ATTEMPTS or "address already in use" not in str(exc):
                    raise
            for member in self.members:  # they may have recorded the taken ports
                shutil.rmtree(member.data_dir, ignore_errors=True)
            attempt += 1

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM a lone member (then SIGKILL after `timeout`); SIGKILL a cluster. A leader
        that stops hands its role to a follower it believes alive and waits for it, for
        seconds when that follower is stopping too: a cluster torn down has nothing to keep."""
        if len(self.members) == 1:
            self.supervisor.stop_all(timeout)
            return
        for child in self.supervisor.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
        self.supervisor.stop_all(timeout)  # reaps them

    def kill(self, i: int = 0) -> None:
        """SIGKILL member `i`: no goodbye, like a machine losing power."""
        child = self.supervisor.children[self.members[i].name]
        self.supervisor.signal(child.name, signal.SIGKILL)
        child.proc.wait(10)

    def stop_member(self, i: int = 0) -> None:
        self.supervisor.stop(self.supervisor.children[self.members[i].name])

    def restart(self, i: int = 0, timeout: float = 15.0) -> None:
        """Stop member `i` if it runs, start it again on its ports and data dir, wait for it."""
        self.stop_member(i)
        self._spawn(i)
        self.wait_healthy(i, timeout)

    def __enter__(self) -> LocalEtcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation -----------------------------------------------------------------------

    def healthy(self, i: int = 0) -> bool:
        context = self.tls.client_context() if self.tls else None
        try:
            with urllib.request.urlopen(self.urls[i] + "/health", timeout=1.0,
                                        context=context) as reply:
                return bool(json.loads(reply.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def wait_healthy(self, i: int = 0, timeout: float = 15.0) -> None:
        """Poll member `i`'s /health; `StartError` (with its log) if it dies or stays sick."""
        child = self.supervisor.children[self.members[i].name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                raise StartError(f"{child.name} exited with code {child.proc.returncode}:\n"
                                 f"{child.log_tail()}")
            if self.healthy(i):
                return
            time.sleep(0.02)
        raise StartError(f"{child.name} was not healthy within {timeout:g} s:\n"
                         f"{child.log_tail()}")

    # -- processes -------------------------------------------------------------------------

    def _pick_ports(self) -> None:
        ports = _free_ports(2 * len(self.members))
        for member, client, peer in zip(self.members, ports[::2], ports[1::2], strict=True):
            member.client_port, member.peer_port = client, peer

    def _args(self, member: Member) -> list[str]:
        client = self.urls[self.members.index(member)]
        cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        args = ["--name", member.name, "--data-dir", str(member.data_dir),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", f"http://127.0.0.1:{member.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{member.peer_port}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", self._token, *RAFT_ARGS,
                "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
                *self.extra_args]
        if self.tls:
            args += ["--cert-file", self.tls.server_cert, "--key-file", self.tls.server_key,
                     "--trusted-ca-file", self.tls.ca_file, "--client-cert-auth"]
        return args

    def _spawn(self, i: int) -> Child:
        member = self.members[i]
        args = self._args(member)
        log = self.supervisor.run_dir / f"{member.name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [ETCD_BINARY, *args], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=_environment(),
                preexec_fn=die_with_parent,  # noqa: PLW1509
                # out of the terminal's process group: Ctrl-C stops the nodes, which then
                # leave the cluster, before etcd is stopped (last, by us)
                start_new_session=True,
            )
        child = Child(member.name, args, proc, self.supervisor.run_dir / f"{member.name}.unused",
                      log)
        self.supervisor.children[member.name] = child
        return child


def _environment() -> dict[str, str]:
    """Ours without ETCD_* (etcd reads its flags from them too), plus what arm64 needs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    if platform.machine() in ("aarch64", "arm64"):
        env["ETCD_UNSUPPORTED_ARCH"] = "arm64"  # etcd 3.4 refuses to start there without it
    return env


def _free_ports(n: int) -> list[int]:
    """`n` distinct ports that were free on 127.0.0.1 a moment ago (held open together)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
