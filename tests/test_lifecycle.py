"""The request lifecycle through the real CLI, worker, Temporal and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from rolecall.models import RequestState
from rolecall.operations import handle
from tests.conftest import Roles, eventually


async def test_request_approve_relinquish(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role, "1h")
    assert rid == f"access/pg/{role}/{login}@example.com"
    status = await stack.status(rid)
    assert status.state == RequestState.PENDING
    assert status.db_user == login
    assert not pg.is_member(login, role)

    r = await stack.cli("approve", rid, "--as", "DBA@example.com")
    assert r.code == 0, r.err
    status = await stack.wait_state(rid, RequestState.GRANTED)
    assert pg.is_member(login, role)
    assert status.decided_by == "dba@example.com"
    assert status.granted_at is not None and status.expires_at is not None
    assert status.expires_at - status.granted_at == timedelta(hours=1)

    r = await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
    assert r.code == 0, r.err
    status = await stack.wait_state(rid, RequestState.RELINQUISHED)
    assert not pg.is_member(login, role)
    assert status.revoked_at is not None

    r = await stack.cli("status", rid, "--json")
    assert r.code == 0
    assert '"state": "relinquished"' in r.out


async def test_grant_expires_on_the_durable_timer(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role, "3s")
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.GRANTED)
    assert pg.is_member(login, role)
    status = await stack.wait_state(rid, RequestState.EXPIRED, timeout=30)
    assert not pg.is_member(login, role)
    assert status.revoked_at is not None and status.expires_at is not None
    # The revoke happens at expiry, not long after it.
    assert status.revoked_at - status.expires_at < timedelta(seconds=10)


async def test_deny_with_reason(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role)
    r = await stack.cli("deny", rid, "--as", "dba@example.com", "--reason", "use the replica")
    assert r.code == 0, r.err
    status = await stack.wait_state(rid, RequestState.DENIED)
    assert status.decided_by == "dba@example.com"
    assert status.decision_reason == "use the replica"
    assert not pg.is_member(login, role)


async def test_cancel_by_requester(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role)
    r = await stack.cli("cancel", rid, "--as", "dba@example.com")
    assert r.code == 2
    assert "only the requester can cancel" in r.err
    r = await stack.cli("cancel", rid, "--as", f"{login}@example.com")
    assert r.code == 0, r.err
    await stack.wait_state(rid, RequestState.CANCELLED)
    r = await stack.cli("approve", rid, "--as", "dba@example.com")
    assert r.code == 2
    assert "already cancelled" in r.err
    assert not pg.is_member(login, role)


async def test_approval_timeout(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], approval_timeout="2s")
    rid = await stack.request(login, role)
    status = await stack.wait_state(rid, RequestState.TIMED_OUT, timeout=20)
    assert "no approver decided within 2s" in (status.error or "")
    r = await stack.cli("approve", rid, "--as", "dba@example.com")
    assert r.code == 2 and "already timed out" in r.err
    assert not pg.is_member(login, role)


async def test_duplicate_request_refused_then_allowed_after_close(make_stack, roles: Roles) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role)
    r = await stack.cli(
        "request", "--instance", "pg", "--role", role, "--duration", "5m", "--as",
        f"{login}@example.com",
    )  # fmt: skip
    assert r.code == 2
    assert "you already have a pending or active request" in r.err
    await stack.cli("cancel", rid, "--as", f"{login}@example.com")
    await stack.wait_state(rid, RequestState.CANCELLED)
    await handle(stack.client, rid).result()  # closed once its last notification is sent
    # A closed request's ID can be used again.
    assert await stack.request(login, role) == rid
    await eventually(lambda: _is_pending(stack, rid), timeout=10, what="the second request to be pending")


async def _is_pending(stack, rid: str) -> bool:
    return (await stack.status(rid)).state == RequestState.PENDING
