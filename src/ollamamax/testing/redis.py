"""A real `redis-server` for tests and benchmarks of the shared cache tier.

    with LocalRedis(tmp_path) as server:
        tier = RedisTier(url=server.url, ...)

Redis needs an explicit port (``--port 0`` turns TCP off), so one found free on 127.0.0.1 is
used, and another if it was taken before the server bound it. Nothing is persisted
(``--save ''``, no AOF); the server dies with its parent (PR_SET_PDEATHSIG) and is stopped
with SIGTERM, then SIGKILL. The binary is Debian's ``redis-server``; `missing_reason()` says
why tests must skip where it is absent. A system Redis on 6379 is neither used nor touched.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from ollamamax.supervisor import StartError, die_with_parent

REDIS_BINARY = "redis-server"
START_ATTEMPTS = 3


def missing_reason() -> str | None:
    """Why Redis tests cannot run here, or None."""
    if shutil.which(REDIS_BINARY) is None:
        return ("the redis-server binary is not installed (Debian: apt-get install redis-server; "
                "./dev.sh test installs it)")
    return None


class LocalRedis:
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> LocalRedis:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = _free_port()
            self._spawn()
            try:
                self._wait_ready(timeout)
                return self
            except StartError:
                self.stop()
                if attempt == START_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self) -> None:
        log = self.run_dir / "redis.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [REDIS_BINARY, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.run_dir), "--protected-mode", "yes"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent)  # noqa: PLW1509

    def _wait_ready(self, timeout: float) -> None:
        """PING until PONG; `StartError` with the log if the server exits or stays silent."""
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"redis-server exited with code {self.proc.returncode}:\n"
                                 f"{self._log_tail()}")
            if _pong(self.port):
                return
            time.sleep(0.02)
        raise StartError(f"redis-server did not answer within {timeout:g} s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        path = self.run_dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
