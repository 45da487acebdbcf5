"""The lent role dropped by a DBA while it is granted: the revoke still ends the request."""

from __future__ import annotations

from datetime import timedelta

from psycopg import sql

from rolecall.models import RequestState
from tests.conftest import Roles
from tests.faults.support import assert_no_grant_left_behind, delivered_notifications


async def test_role_dropped_while_granted_expires_cleanly(make_stack, roles: Roles, pg) -> None:
    """DROP ROLE while granted; the expiry's revoke finds no role and succeeds.

    Bound: the request ends no later than expiry + 5 s, with the requester told and a
    warning that the role no longer exists (no retry loop, no alert on a missing role).
    """
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], revoke_alert_after=1)
    rid = await stack.request(login, role, "3s")
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.GRANTED)
    assert pg.is_member(login, role)
    pg.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert not pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])

    final = await stack.wait_state(rid, RequestState.EXPIRED, timeout=15)
    assert "role or login no longer exists" in final.warnings
    await assert_no_grant_left_behind(stack.client, pg, final, login, role, timedelta(seconds=5))
    assert "revoke_failing" not in await delivered_notifications(stack.client, rid)
