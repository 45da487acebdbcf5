"""What one grant and one revoke activity cost, alone: wall time, round trips and CPU, a table.

    .venv/bin/python bench/db_step_cost.py [--n 150] [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

Why it exists: in the mass expiry the cores are the limit, and a revoke there cost PostgreSQL
2.8 ms of CPU against the engine floor's 0.6 ms (one bare REVOKE). The figures cannot show a
change of a millisecond per activity through their run-to-run noise; this can. It runs the
real `PostgresActivities.grant_role` and `revoke_role` in this process (temporalio's
`ActivityEnvironment`, no server), N times each on N fresh role/login pairs, and reads:
- wall time per activity (p50, p90);
- this process's CPU per activity (the worker's share);
- the CPU of PostgreSQL's backend serving rolecall's pooled connection (`/proc`, utime+stime;
  the server must run on this machine), per activity;
- round trips: the Sync and Query messages in libpq's trace of the pooled connection, in a
  separate pass of 10 more of each (tracing costs time).
A benchmark, not a test: it asserts nothing and CI does not run it. It creates and drops its
own roles (prefix `rc_cost_`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.pq import Trace
from temporalio.testing import ActivityEnvironment

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from activities.postgres import PostgresActivities, privileges_snapshot  # noqa: E402
from rolecall.config import ConfigStore  # noqa: E402
from rolecall.models import GrantInput, RevokeInput  # noqa: E402
from rolecall.pg import close_idle, connect  # noqa: E402

_DSN_ENV = "ROLECALL_COST_DSN"
_TICKS = os.sysconf("SC_CLK_TCK")
_TRACED = 10  # activities of each kind run once more, traced, to count round trips


def _backend_cpu(pid: int) -> float:
    """Seconds of CPU the backend has used (utime + stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def _backend_pid(target_instance: str, store: ConfigStore) -> int:
    inst = store.get().instance(target_instance)
    async with connect(inst.target()) as conn:
        cur = await conn.execute("SELECT pg_backend_pid()")
        row = await cur.fetchone()
        assert row is not None
        return int(str(row[0]))


async def _round_trips(runs: list[object], step: object, store: ConfigStore) -> int:
    """Round trips of `runs` activities, from libpq's trace of the pooled connection: its
    Sync messages (an execute with parameters, or a whole pipeline, ends with one) and its
    simple-protocol Query messages. A separate pass: tracing costs time."""
    env = ActivityEnvironment()
    with tempfile.TemporaryFile("w+") as trace:
        async with connect(store.get().instance("pg").target()) as conn:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
        try:
            for inp in runs:
                await env.run(step, inp)  # type: ignore[arg-type]
        finally:
            async with connect(store.get().instance("pg").target()) as conn:
                conn.pgconn.untrace()
        trace.seek(0)
        # A simple-protocol Query is a round trip of its own; extended ones end with a Sync.
        sent = (line.rstrip("\n").split("\t") for line in trace)
        return sum(1 for f in sent if f[:1] == ["F"] and f[2:3] in (["Sync"], ["Query"]))


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


async def _measure(
    name: str, runs: list[object], traced: list[object], step: object, pid: int, store: ConfigStore
) -> tuple[str, str, str, str, str, str]:
    env = ActivityEnvironment()
    walls: list[float] = []
    cpu0, srv0 = time.process_time(), _backend_cpu(pid)
    for inp in runs:
        t0 = time.perf_counter()
        await env.run(step, inp)  # type: ignore[arg-type]
        walls.append((time.perf_counter() - t0) * 1000)
    cpu1, srv1 = time.process_time(), _backend_cpu(pid)
    n = len(runs)
    syncs = await _round_trips(traced, step, store)
    n_traced = len(traced)
    return (
        name,
        f"{statistics.median(walls):.2f} / {_pct(walls, 0.9):.2f}",
        f"{(cpu1 - cpu0) * 1000 / n:.2f}",
        f"{(srv1 - srv0) * 1000 / n:.2f}",
        f"{syncs / n_traced:.1f}",
        str(n),
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument(
        "--dsn", default=os.environ.get("ROLECALL_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    args = ap.parse_args()
    os.environ[_DSN_ENV] = args.dsn
    tag = uuid.uuid4().hex[:6]
    pairs = [(f"rc_cost_{tag}_r{i}", f"rc_cost_{tag}_u{i}") for i in range(args.n + _TRACED)]
    admin = psycopg.connect(args.dsn, autocommit=True)
    for role, login in pairs:
        admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(login)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cost.toml"
        roles = ", ".join(f'"{r}"' for r, _ in pairs)
        path.write_text(
            f'[instances.pg]\ndsn_env = "{_DSN_ENV}"\nroles = [{roles}]\napprovers = ["dba@example.com"]\n'
        )
        store = ConfigStore(path)
        acts = PostgresActivities(store)
        inst = store.get().instance("pg")
        try:
            pid = await _backend_pid("pg", store)
            grants: list[object] = []
            async with connect(inst.target()) as conn:
                for role, login in pairs:
                    snap = await privileges_snapshot(conn, inst, role)
                    grants.append(
                        GrantInput(
                            request_id=f"cost-{role}",
                            instance="pg",
                            role=role,
                            db_user=login,
                            target=inst.target(),
                            privileges=snap,
                        )
                    )
            rows = [
                await _measure("grant_role", grants[: args.n], grants[args.n :], acts.grant_role, pid, store)
            ]
            revokes: list[object] = [
                RevokeInput(
                    request_id=f"cost-{role}",
                    instance="pg",
                    role=role,
                    db_user=login,
                    target=inst.target(),
                    owned_at_grant=[],
                )
                for role, login in pairs
            ]
            rows.append(
                await _measure(
                    "revoke_role", revokes[: args.n], revokes[args.n :], acts.revoke_role, pid, store
                )
            )
        finally:
            await close_idle()
            for role, login in pairs:
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    print(f"server {admin.info.server_version}, {args.n} of each, on one pooled connection\n")
    print("| activity | wall p50 / p90 (ms) | worker CPU (ms) | backend CPU (ms) | round trips | n |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    asyncio.run(main())
