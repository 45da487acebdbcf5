"""Good manners on a production primary: timeouts, a connection budget, a dedicated grantor."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from rolecall.models import AccessRequest, Decision, RequestState
from rolecall.operations import decide, submit
from tests.conftest import Roles, eventually


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


async def test_a_revoke_blocked_by_a_lock_gives_up_and_is_retried(make_stack, roles: Roles, pg) -> None:
    """Bound: the REVOKE waits at most lock_timeout (1 s) per attempt, never forever."""
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], lock_timeout="1s")
    rid = await stack.request(login, role)
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.GRANTED)
    with psycopg.connect(pg.dsn) as blocker:  # a DBA's long transaction holding the catalog
        blocker.execute("LOCK TABLE pg_catalog.pg_auth_members IN SHARE MODE")
        await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
        handle = stack.client.get_workflow_handle(rid)

        async def failed_on_the_lock() -> bool:
            desc = await handle.describe()
            pending = desc.raw_description.pending_activities
            return any(
                p.activity_type.name == "revoke_role" and "lock timeout" in p.last_failure.message
                for p in pending
            )

        await eventually(failed_on_the_lock, 15, "a revoke attempt to give up on the lock")
        assert pg.is_member(login, role)
        blocker.rollback()
    await stack.wait_state(rid, RequestState.RELINQUISHED, timeout=45)
    assert not pg.is_member(login, role)


async def test_fifty_revokes_share_two_connections(make_stack, roles: Roles, pg) -> None:
    """max_connections = 2: 50 requests relinquished at once never open a third backend."""
    role = roles.role()
    logins = [roles.login(f"u{i}") for i in range(50)]
    admin = roles.create(roles.name("admin"), "LOGIN SUPERUSER")  # counted in pg_stat_activity
    stack = await make_stack([role], dsn=make_conninfo(pg.dsn, user=admin), max_connections=2)
    peak, stop = [0], threading.Event()

    def sample() -> None:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            while not stop.is_set():
                n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", [admin])
                peak[0] = max(peak[0], int(n.fetchone()[0]))  # type: ignore[index]
                time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        statuses = await asyncio.gather(
            *(
                submit(
                    stack.client,
                    AccessRequest(
                        requester=f"{u}@example.com", instance="pg", role=role, duration=timedelta(hours=1)
                    ),
                    stack.task_queue,
                )
                for u in logins
            )
        )
        dba = Decision(actor="dba@example.com")
        await asyncio.gather(*(decide(stack.client, s.id, "approve", dba) for s in statuses))
        await asyncio.gather(*(stack.wait_state(s.id, RequestState.GRANTED, timeout=60) for s in statuses))
        await asyncio.gather(
            *(decide(stack.client, s.id, "relinquish", Decision(actor=s.requester)) for s in statuses)
        )
        await asyncio.gather(
            *(stack.wait_state(s.id, RequestState.RELINQUISHED, timeout=60) for s in statuses)
        )
    finally:
        stop.set()
        sampler.join()
    assert not any(pg.is_member(u, role) for u in logins)
    assert 1 <= peak[0] <= 2, f"{peak[0]} rolecall backends at once"


async def test_setup_sql_limits_the_logins_connections(make_stack, roles: Roles, pg) -> None:
    role = roles.role()
    stack = await make_stack([role], worker=False, max_connections=3)
    r = await stack.cli("setup-sql", "--instance", "pg", "--server-version", "16", "--role", role)
    assert r.code == 0, r.err
    assert 'CREATE ROLE "rolecall_admin" LOGIN NOINHERIT CONNECTION LIMIT 8;' in r.out


async def test_a_dedicated_grantor_keeps_rolecalls_grants_apart(make_stack, roles: Roles, pg) -> None:
    """A superuser admin login grants GRANTED BY a NOLOGIN grantor role (docs/security.md)."""
    role, login, svc = roles.role(), roles.login(), roles.login("svc")
    grantor = roles.role("grantor")
    admin_opts = "WITH ADMIN TRUE, INHERIT FALSE, SET FALSE" if pg.version >= 160000 else "WITH ADMIN OPTION"
    pg.execute(sql.SQL("GRANT {} TO {} " + admin_opts).format(_ident(role), _ident(grantor)))
    stack = await make_stack([role], grantor=grantor)
    rid = await stack.request(login, role)
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.GRANTED)
    grantors = pg.execute(
        """SELECT g.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
           JOIN pg_roles u ON u.oid = m.member JOIN pg_roles g ON g.oid = m.grantor
           WHERE r.rolname = %s AND u.rolname = %s""",
        [role, login],
    )
    assert grantors == [(grantor,)]
    pg.execute(sql.SQL("GRANT {} TO {}").format(_ident(role), _ident(svc)))
    r = await stack.cli("reconcile", "--instance", "pg")
    assert r.code == 0, r.err
    assert f"{role} held by {svc}, granted by" in r.out and "(left alone)" in r.out
    assert f"held by {login}" not in r.out, "rolecall's own grant, with its request open"
    await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
    await stack.wait_state(rid, RequestState.RELINQUISHED)
    assert not pg.is_member(login, role)
    assert pg.is_member(svc, role)
