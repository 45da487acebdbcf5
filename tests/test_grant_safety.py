"""Checked again at grant time; logins that are people; PostgreSQL 15's SET ROLE escape.

A role that became unsafe between the request and the approval is refused at the grant, on
the connection that would have granted it, and nothing is granted.
"""

from __future__ import annotations

from psycopg import sql

from rolecall.models import RequestState
from tests.conftest import Roles
from tests.test_durability import _notified_events


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


async def _no_request_started(stack) -> bool:
    query = f'TaskQueue = "{stack.task_queue}"'
    return [wf async for wf in stack.client.list_workflows(query)] == []


async def test_role_that_became_unsafe_before_approval_is_refused_at_grant(
    make_stack, roles: Roles, pg
) -> None:
    role, login = roles.role("support_rw"), roles.login()
    table = roles.name("tickets")
    stack = await make_stack([role])
    rid = await stack.request(login, role)
    pg.execute(sql.SQL("CREATE TABLE {} (x int)").format(_ident(table)))
    pg.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(_ident(table), _ident(role)))
    await stack.cli("approve", rid, "--as", "dba@example.com")
    status = await stack.wait_state(rid, RequestState.FAILED)
    assert status.error == (
        f'grant failed: role "{role}" owns table public.{table}: members could grant themselves '
        "lasting access"
    )
    assert not pg.is_member(login, role), "nothing is granted"
    assert "failed" in await _notified_events(stack.client, rid), "requester and approvers are told"
    pg.execute(sql.SQL("DROP TABLE {}").format(_ident(table)))


async def test_login_that_became_a_group_before_approval_is_refused_at_grant(
    make_stack, roles: Roles, pg
) -> None:
    role, login, member = roles.role(), roles.login(), roles.login("colleague")
    stack = await make_stack([role])
    rid = await stack.request(login, role)
    pg.execute(sql.SQL("GRANT {} TO {}").format(_ident(login), _ident(member)))
    await stack.cli("approve", rid, "--as", "dba@example.com")
    status = await stack.wait_state(rid, RequestState.FAILED)
    assert status.error is not None
    assert f"is a group role with members ({member}): a grant to it would reach every member" in status.error
    assert not pg.is_member(login, role) and not pg.is_member(member, role)


async def test_group_and_nologin_mappings_are_refused_before_anything_starts(
    make_stack, roles: Roles, pg
) -> None:
    role, group, member = roles.role(), roles.login("team"), roles.login("member")
    nologin = roles.role("nologin")
    pg.execute(sql.SQL("GRANT {} TO {}").format(_ident(group), _ident(member)))
    stack = await make_stack([role])
    r = await stack.cli(
        "request", "--instance", "pg", "--role", role, "--duration", "1h", "--as", f"{group}@example.com"
    )
    assert r.code == 2
    assert r.err.strip().splitlines() == [
        f"rolecall: error: database login '{group}' (for {group}@example.com) on instance 'pg' is a "
        f"group role with members ({member}): a grant to it would reach every member"
    ]
    r = await stack.cli(
        "request", "--instance", "pg", "--role", role, "--duration", "1h", "--as", f"{nologin}@example.com"
    )
    assert r.code == 2
    assert "is not a LOGIN role: rolecall lends roles to people's own logins" in r.err
    assert not pg.is_member(group, role) and not pg.is_member(member, role)


async def test_requesters_outside_the_allowed_domains_are_refused_before_anything_starts(
    make_stack, roles: Roles, pg
) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], allowed_email_domains=["corp.example"])
    r = await stack.cli(
        "request", "--instance", "pg", "--role", role, "--duration", "1h", "--as", f"{login}@example.com"
    )
    assert r.code == 2
    assert r.err.strip() == (
        f"rolecall: error: {login}@example.com may not request access on instance 'pg': only @corp.example "
        "addresses may"
    )
    assert await _no_request_started(stack)
    assert not pg.is_member(login, role)
    r = await stack.cli(
        "request", "--instance", "pg", "--role", role, "--duration", "1h", "--as", f"{login}@corp.example"
    )
    assert r.code == 0, r.err


async def test_pg15_refuses_roles_that_may_create_objects(make_stack, roles: Roles, pg) -> None:
    """On 15 a member can SET ROLE to the lent role; on 16 rolecall grants WITH SET FALSE."""
    role, login = roles.role(), roles.login()
    schema = roles.name("scratch")
    roles.created.insert(0, schema)
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(_ident(schema)))
    pg.execute(sql.SQL("GRANT CREATE ON SCHEMA {} TO {}").format(_ident(schema), _ident(role)))
    stack = await make_stack([role])
    r = await stack.cli(
        "request", "--instance", "pg", "--role", role, "--duration", "1h", "--as", f"{login}@example.com"
    )
    if pg.version < 160000:
        assert r.code == 2
        assert r.err.strip() == (
            f'rolecall: error: role "{role}" has CREATE on schema {schema}: on PostgreSQL 15 a member '
            "can SET ROLE to it and create objects it owns, which outlive the revoke"
        )
        lenient = await make_stack([role], unsafe_allowed=[role])
        r = await lenient.cli(
            "request", "--instance", "pg", "--role", role, "--duration", "1h", "--as", f"{login}@example.com"
        )
        assert r.code == 0, r.err
        assert f'warning: role "{role}" has CREATE on schema {schema}' in r.out
    else:
        assert r.code == 0, r.err
    pg.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(_ident(schema)))


async def test_objects_the_role_came_to_own_while_lent_are_reported_not_dropped(
    make_stack, roles: Roles, pg
) -> None:
    role, login = roles.role(), roles.login()
    schema = roles.name("scratch")
    roles.created.insert(0, schema)
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(_ident(schema)))
    pg.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(_ident(schema), _ident(role)))
    stack = await make_stack([role], unsafe_allowed=[role])
    rid = await stack.request(login, role)
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.GRANTED)
    table = f"{schema}.left_behind"
    if pg.version < 160000:
        # The escape itself: SET ROLE to the lent role and create an object it owns.
        with pg.connect_as(login) as session:
            session.execute(sql.SQL("SET ROLE {}").format(_ident(role)))
            session.execute(sql.SQL("CREATE TABLE {}.left_behind (x int)").format(_ident(schema)))
    else:
        # 16 refuses SET ROLE to it; an object can still come to be owned by it (by an owner).
        pg.execute(sql.SQL("CREATE TABLE {}.left_behind (x int)").format(_ident(schema)))
        pg.execute(sql.SQL("ALTER TABLE {}.left_behind OWNER TO {}").format(_ident(schema), _ident(role)))
    await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
    status = await stack.wait_state(rid, RequestState.RELINQUISHED)
    assert status.new_objects == [f"table {table}"]
    assert (
        f"role {role!r} came to own objects while it was lent (not dropped): table {table}" in status.warnings
    )
    assert pg.execute("SELECT to_regclass(%s) IS NOT NULL", [table]) == [(True,)], "never dropped"
    assert not pg.is_member(login, role)
    pg.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(_ident(schema)))
