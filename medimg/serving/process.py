"""``python -m medimg.serve`` in a child process, waited on until ``/health`` answers: for the load benchmark,
the tests and scripts that need a real server on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_mib(self) -> float:
        """The server's resident memory (Linux /proc), MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for process {self.process.pid}")


def _wait_healthy(server: ServerProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.process.returncode}:\n{server.log()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /health within {timeout_s:.0f} s:\n{server.log()[-4000:]}")


@contextlib.contextmanager
def running_server(overrides: Sequence[str], log_path: Path, timeout_s: float = 120,
                   env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """``python -m medimg.serve <overrides>`` on a free loopback port, its output in ``log_path``; stopped
    (SIGTERM, then SIGKILL after 10 s) when the block ends."""
    port = free_port()
    cmd = [sys.executable, "-m", "medimg.serve", "host=127.0.0.1", f"port={port}", *overrides]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_healthy(server, timeout_s)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
