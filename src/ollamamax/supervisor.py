"""Starting and stopping OllamaMax processes (``ollamamax up``, tests, benchmarks).

Each child is ``python -m ollamamax ...`` with ``--announce-file``: it writes its URL there
once it serves, so ports can be chosen by the OS (port 0) and readiness is known without
guessing. Children die with their parent (Linux ``PR_SET_PDEATHSIG``), and `stop_all` sends
SIGTERM, waits, then SIGKILLs what is left: nothing outlives the supervisor.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ollamamax.errors import OllamaMaxError


class StartError(OllamaMaxError):
    """A child process exited or did not become ready in time."""


@dataclass
class Child:
    name: str
    args: list[str]
    proc: subprocess.Popen[bytes]
    announce: Path
    log: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.children: dict[str, Child] = {}

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        """Start ``python -m ollamamax ARGS --announce-file ...`` without waiting for it."""
        announce = self.run_dir / f"{name}.ready.json"
        announce.unlink(missing_ok=True)
        log = self.run_dir / f"{name}.log"
        full = [sys.executable, "-m", "ollamamax", *args, "--announce-file", str(announce)]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                preexec_fn=die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        child = Child(name, args, proc, announce, log)
        self.children[name] = child
        return child

    def wait_ready(self, child: Child, timeout: float = 30.0) -> str:
        """Wait until `child` announces its URL; `StartError` if it dies or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.announce.exists():
                with contextlib.suppress(ValueError, OSError):
                    child.url = json.loads(child.announce.read_text())["url"]
                    return child.url
            if not child.alive():
                raise StartError(f"{child.name} exited with code {child.proc.returncode}:\n"
                                 f"{child.log_tail()}")
            time.sleep(0.02)
        raise StartError(f"{child.name} was not ready within {timeout:g} s:\n{child.log_tail()}")

    def signal(self, name: str, sig: int) -> None:
        child = self.children[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, sig)

    def stop(self, child: Child, timeout: float = 10.0) -> None:
        self._stop([child], timeout)

    def stop_all(self, timeout: float = 10.0) -> None:
        self._stop(list(self.children.values()), timeout)

    @staticmethod
    def _stop(children: list[Child], timeout: float) -> None:
        """SIGTERM all (SIGCONT first: a paused child cannot act on it), then SIGKILL stragglers."""
        for child in children:
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGCONT)
                    child.proc.terminate()
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            child.announce.unlink(missing_ok=True)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
