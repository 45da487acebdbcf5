"""Lend only what can be taken back: refusal rules, the least-privilege login, doctor."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from rolecall.models import RequestState
from tests.conftest import Roles
from tests.test_durability import _notified_events


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("CREATE TABLE {obj} (x int); ALTER TABLE {obj} OWNER TO {role}", "owns table public.{obj}"),
        (
            "CREATE FUNCTION {obj}() RETURNS int LANGUAGE sql AS 'select 1'; "
            "ALTER FUNCTION {obj}() OWNER TO {role}",
            "owns function public.{obj}()",
        ),
        ("CREATE SCHEMA {obj} AUTHORIZATION {role}", "owns schema {obj}"),
        (
            "CREATE TABLE {obj} (x int); GRANT SELECT ON {obj} TO {role} WITH GRANT OPTION",
            "holds SELECT on table {obj} WITH GRANT OPTION",
        ),
        (
            "CREATE TABLE {obj} (x int); GRANT UPDATE (x) ON {obj} TO {role} WITH GRANT OPTION",
            "holds UPDATE on column {obj}.x WITH GRANT OPTION",
        ),
        (
            "CREATE FUNCTION {obj}() RETURNS int LANGUAGE sql AS 'select 1'; "
            "GRANT EXECUTE ON FUNCTION {obj}() TO {role} WITH GRANT OPTION",
            "holds EXECUTE on function {obj}() WITH GRANT OPTION",
        ),
        ("CREATE ROLE {obj}; GRANT {obj} TO {role} WITH ADMIN OPTION", "holds ADMIN OPTION on role {obj}"),
    ],
)
async def test_roles_with_lasting_powers_refused(make_stack, roles: Roles, pg, setup, expected) -> None:
    role, login = roles.role(), roles.login()
    obj = roles.name("obj")
    roles.created.insert(0, obj)  # dropped last (DROP OWNED BY the role comes first)
    pg.execute(sql.SQL(setup).format(obj=_ident(obj), role=_ident(role)))
    stack = await make_stack([role])
    r = await stack.cli(
        "request", "--instance", "pg", "--role", role, "--duration", "1h", "--as", f"{login}@example.com"
    )
    assert r.code == 2
    assert f'role "{role}" {expected.format(obj=obj)}: members could grant themselves lasting access' in r.err
    assert not pg.is_member(login, role)
    pg.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(_ident(obj)))
    pg.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_ident(obj)))
    pg.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(_ident(obj)))


async def test_unsafe_allowed_role_is_lent_with_a_warning(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    table = roles.name("owned")
    pg.execute(sql.SQL("CREATE TABLE {} (x int)").format(_ident(table)))
    pg.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(_ident(table), _ident(role)))
    stack = await make_stack([role], unsafe_allowed=[role])
    r = await stack.cli(
        "request", "--instance", "pg", "--role", role, "--duration", "1h", "--as", f"{login}@example.com"
    )
    assert r.code == 0, r.err
    assert f'warning: role "{role}" owns table public.{table}' in r.out
    status = await stack.status(r.last_line)
    assert any("members could grant themselves lasting access" in w for w in status.warnings)
    pg.execute(sql.SQL("DROP TABLE {}").format(_ident(table)))


def _admin_dsn(pg, login: str) -> str:
    return make_conninfo(pg.dsn, user=login)


async def _setup_admin(stack, pg, login: str) -> str:
    r = await stack.cli("setup-sql", "--instance", "pg", "--login", login)
    assert r.code == 0, r.err
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(r.out.encode())
    return r.out


async def test_setup_sql_makes_doctor_green_and_a_full_cycle_work(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    table = roles.name("t")
    pg.execute(sql.SQL("CREATE TABLE {} (x int)").format(_ident(table)))
    pg.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(_ident(table), _ident(role)))
    admin = roles.name("admin")
    roles.created.append(admin)
    bootstrap = await make_stack([role], worker=False)
    script = await _setup_admin(bootstrap, pg, admin)
    assert f"PostgreSQL {pg.version // 10000}" in script
    if pg.version >= 160000:
        assert "WITH ADMIN TRUE, INHERIT FALSE, SET FALSE" in script
    else:
        assert "NOINHERIT" in script and "WITH ADMIN OPTION" in script

    stack = await make_stack([role], dsn=_admin_dsn(pg, admin))
    r = await stack.cli("doctor")
    assert r.code == 0, r.out + r.err
    assert f"as {admin}" in r.out
    assert f"OK    {role}: grant, revoke" in r.out
    assert "OK    sessions: can end grantees' sessions (pg_signal_backend)" in r.out
    assert "FAIL" not in r.out and "WARN" not in r.out

    # The admin login cannot use the role it lends.
    with (
        psycopg.connect(_admin_dsn(pg, admin), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(sql.SQL("SELECT * FROM {}").format(_ident(table)))

    rid = await stack.request(login, role)
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.GRANTED)
    assert pg.is_member(login, role)
    session = pg.connect_as(login)
    session.execute(sql.SQL("SELECT * FROM {}").format(_ident(table)))
    await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
    status = await stack.wait_state(rid, RequestState.RELINQUISHED)
    assert not pg.is_member(login, role)
    with pytest.raises(psycopg.OperationalError):  # ended by the least-privilege login
        session.execute("SELECT 1")
    assert status.revoked_at is not None
    pg.execute(sql.SQL("DROP TABLE {}").format(_ident(table)))


async def test_doctor_names_what_is_missing(make_stack, roles: Roles, pg) -> None:
    role, other = roles.role(), roles.role("rw")
    admin = roles.name("admin")
    roles.created.append(admin)
    bootstrap = await make_stack([role, other], worker=False)
    await _setup_admin(bootstrap, pg, admin)
    pg.execute(sql.SQL("REVOKE {} FROM {}").format(_ident(other), _ident(admin)))
    pg.execute(sql.SQL("REVOKE pg_signal_backend FROM {}").format(_ident(admin)))
    stack = await make_stack([role, other, roles.name("gone")], dsn=_admin_dsn(pg, admin), worker=False)
    r = await stack.cli("doctor", "--instance", "pg")
    assert r.code == 1
    assert f"FAIL  {other}: rolecall cannot grant or revoke it (no ADMIN OPTION)" in r.out
    assert f'fix: GRANT "{other}" TO "{admin}" WITH ADMIN' in r.out
    assert "FAIL  sessions: cannot end grantees' sessions" in r.out
    assert f'fix: GRANT pg_signal_backend TO "{admin}"' in r.out
    assert f"FAIL  {roles.name('gone')}: is requestable but does not exist" in r.out
    assert f"OK    {role}: grant, revoke" in r.out


async def test_admin_losing_its_privilege_alerts_and_never_reports_success(
    make_stack, roles: Roles, pg
) -> None:
    role, login = roles.role(), roles.login()
    admin = roles.name("admin")
    roles.created.append(admin)
    bootstrap = await make_stack([role], worker=False)
    await _setup_admin(bootstrap, pg, admin)
    stack = await make_stack([role], dsn=_admin_dsn(pg, admin), revoke_alert_after=2)
    rid = await stack.request(login, role)
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.GRANTED)
    # Someone takes rolecall's privilege away while the grant is active.
    if pg.version >= 160000:
        # 16 tracks grantors: ADMIN cannot be taken while grants made with it exist (CASCADE
        # would revoke the grantee's membership too). What can still happen: the login is
        # disabled.
        with pytest.raises(psycopg.errors.DependentObjectsStillExist):
            pg.execute(sql.SQL("REVOKE {} FROM {}").format(_ident(role), _ident(admin)))
        pg.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(_ident(admin)))
        # As a DBA disabling a login would: its open sessions (rolecall reuses connections) too.
        pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [admin])
    else:
        pg.execute(sql.SQL("REVOKE {} FROM {}").format(_ident(role), _ident(admin)))
    await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
    await stack.wait_state(rid, RequestState.REVOKING)
    for _ in range(200):
        if "revoke_failing" in await _notified_events(stack.client, rid):
            break
        await __import__("asyncio").sleep(0.1)
    assert "revoke_failing" in await _notified_events(stack.client, rid)
    assert (await stack.status(rid)).state == RequestState.REVOKING
    assert pg.is_member(login, role)
    # Privilege restored: the revoke that kept retrying now succeeds.
    if pg.version >= 160000:
        pg.execute(sql.SQL("ALTER ROLE {} LOGIN").format(_ident(admin)))
    else:
        pg.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(_ident(role), _ident(admin)))
    await stack.wait_state(rid, RequestState.RELINQUISHED, timeout=45)
    assert not pg.is_member(login, role)


def test_setup_sql_offline_quotes_identifiers(tmp_path) -> None:
    from rolecall import cli

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[instances.x]\ndsn_env = "NOPE_' + uuid.uuid4().hex + '"\nroles = ["we\\"ird", "app_*"]\n'
        'approvers = ["a@b.c"]\n'
    )
    assert os.environ.get("NOPE") is None
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["--config", str(cfg), "setup-sql", "--instance", "x", "--server-version", "16"])
    assert code == 0
    text = out.getvalue()
    assert 'GRANT "we""ird" TO "rolecall_admin" WITH ADMIN TRUE, INHERIT FALSE, SET FALSE;' in text
    assert "Roles created later that match app_* need the same GRANT." in text
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["--config", str(cfg), "setup-sql", "--instance", "x", "--server-version", "15"])
    assert 'GRANT "we""ird" TO "rolecall_admin" WITH ADMIN OPTION;' in out.getvalue()
