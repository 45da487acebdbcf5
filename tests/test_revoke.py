"""What a revoke really takes back: memberships, open sessions, and nothing it did not grant."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from rolecall.models import RequestState
from tests.conftest import Roles


def _readable_table(pg, roles: Roles, role: str) -> str:
    table = roles.name("t")
    pg.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(table)))
    pg.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), sql.Identifier(role)))
    return table


async def _granted(stack, login: str, role: str, duration: str = "1h") -> str:
    rid = await stack.request(login, role, duration)
    r = await stack.cli("approve", rid, "--as", "dba@example.com")
    assert r.code == 0, r.err
    await stack.wait_state(rid, RequestState.GRANTED)
    return rid


async def _relinquish(stack, rid: str, login: str) -> None:
    r = await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
    assert r.code == 0, r.err
    await stack.wait_state(rid, RequestState.RELINQUISHED)


async def test_pre_existing_membership_survives_the_revoke(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role)
    # Someone grants it by hand while the request waits for approval.
    pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(login)))
    await stack.cli("approve", rid, "--as", "dba@example.com")
    status = await stack.wait_state(rid, RequestState.GRANTED)
    assert status.pre_existing
    await _relinquish(stack, rid, login)
    assert pg.is_member(login, role), "a membership rolecall did not grant must survive"
    status = await stack.status(rid)
    assert "membership predates the request; left in place" in status.warnings


async def test_revoke_ends_sessions_that_hold_the_role(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    table = _readable_table(pg, roles, role)
    stack = await make_stack([role])
    rid = await _granted(stack, login, role)
    session = pg.connect_as(login)
    session.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
    if pg.version < 160000:
        session.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    else:
        # On 16+ rolecall grants WITH SET FALSE: nobody can SET ROLE to a lent role.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            session.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    await _relinquish(stack, rid, login)
    status = await stack.status(rid)
    assert not pg.is_member(login, role)
    with pytest.raises(psycopg.OperationalError):
        session.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
    assert status.revoked_at is not None


async def test_without_session_termination(make_stack, roles: Roles, pg) -> None:
    """Why terminate_sessions defaults to true: what an open session keeps without it."""
    role, login = roles.role(), roles.login()
    table = _readable_table(pg, roles, role)
    stack = await make_stack([role], terminate_sessions=False)
    rid = await _granted(stack, login, role)
    inheriting = pg.connect_as(login)
    inheriting.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
    set_role = pg.connect_as(login) if pg.version < 160000 else None
    if set_role is not None:
        set_role.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    await _relinquish(stack, rid, login)
    assert not pg.is_member(login, role)
    # Privileges inherited through membership are checked again at the next statement...
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        inheriting.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
    # ...but a session that did SET ROLE (possible before 16) keeps the role's privileges.
    if set_role is not None:
        rows = set_role.execute(
            sql.SQL("SELECT current_user, count(*) FROM {}").format(sql.Identifier(table))
        ).fetchall()
        assert rows == [(role, 0)]
        set_role.close()
    inheriting.close()


async def test_access_kept_through_a_grant_made_by_hand_is_reported_not_touched(
    make_stack, roles: Roles, pg
) -> None:
    """rolecall takes back its own row; a path someone else opened while it was lent stays, said."""
    role, login, parent = roles.role(), roles.login(), roles.role("parent")
    pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(parent)))
    stack = await make_stack([role])
    rid = await _granted(stack, login, role)
    pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(parent), sql.Identifier(login)))
    await _relinquish(stack, rid, login)
    assert pg.is_member(login, role), "the hand-made path through another role is not rolecall's"
    assert pg.is_member(login, parent)
    status = await stack.status(rid)
    assert f"{login!r} still has {role!r} through a grant made outside rolecall" in status.warnings
