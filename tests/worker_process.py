"""`rolecall worker` as a real process: JSON logs to a file, metrics on a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import REPO, Stack, eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int | None

    @property
    def identity_prefix(self) -> str:
        """The SDK's default worker identity is `<pid>@<hostname>`."""
        return f"{self.proc.pid}@"

    def lines(self) -> list[str]:
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()

    def records(self) -> list[dict[str, Any]]:
        """Every stderr line, parsed as JSON: a line that is not JSON fails the test."""
        out = []
        for line in self.lines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    raise AssertionError(f"not a JSON log line: {line!r}") from None
        return out

    def scrape(self) -> str:
        assert self.metrics_port is not None
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    async def ready(self, timeout: float = 30) -> None:
        def started() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}: {self.lines()[-5:]}")
            return any("ready" in line for line in self.lines())

        await eventually(started, timeout=timeout, what="the worker to start")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_worker(stack: Stack, log_dir: Path, metrics: bool = False, **env: str) -> WorkerProcess:
    port = free_port() if metrics else None
    environ = dict(os.environ)
    environ.update(
        ROLECALL_CONFIG=str(stack.config_path),
        ROLECALL_TEMPORAL_ADDRESS=stack.address,
        ROLECALL_TASK_QUEUE=stack.task_queue,
        ROLECALL_LOG_FORMAT="auto",  # stderr is a file: JSON
        **env,
    )
    environ.pop("ROLECALL_METRICS_BIND", None)
    if port is not None:
        environ["ROLECALL_METRICS_BIND"] = f"127.0.0.1:{port}"
    log_path = log_dir / f"worker-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rolecall.cli", "worker"],
            env=environ,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    return WorkerProcess(proc, log_path, port)
