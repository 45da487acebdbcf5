"""A grant held past 15 s continues in a fresh run of its workflow: memory and replay.

A cached run costs the worker memory for every command it issued, and a run woken after
eviction replays its whole history (bench/README.md), so a held grant is carried into a
new run (`HeldGrant`). These tests hold that nothing a DBA relies on changes with it: the
grant still ends on time, by expiry or relinquish; the reconciler sees one healthy grant,
not a stranded one; listings show one request; and nobody can start a run that claims to
hold a grant.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio.client import WorkflowExecutionStatus

from activities.temporal import TemporalActivities
from rolecall.audit import records
from rolecall.config import ConfigStore
from rolecall.models import AccessRequest, Decision, RequestState
from rolecall.operations import get_status, list_requests, page_requests, submit
from rolecall.temporal import DATA_CONVERTER, EXPIRES_AT
from tests.conftest import Roles, eventually
from workflows.access_request import AccessRequestWorkflow


async def _granted_then_continued(temporal, stack, login: str, role: str, hours: int = 8):
    req = AccessRequest(
        requester=f"{login}@example.com", instance="pg", role=role, duration=timedelta(hours=hours)
    )
    status = await submit(temporal.client, req, stack.task_queue)  # the time-skipping client
    h = temporal.client.get_workflow_handle_for(AccessRequestWorkflow.run, status.id)
    await h.signal(AccessRequestWorkflow.approve, Decision(actor="dba@example.com"))
    granted = await stack.wait_state(status.id, RequestState.GRANTED)
    first = (await h.describe()).run_id
    await temporal.fast_forward(h, timedelta(minutes=2))

    async def continued() -> bool:
        return (await h.describe()).run_id != first

    await eventually(continued, timeout=20, what="the held grant continues in a fresh run")
    return h, first, granted


async def test_a_held_grant_continues_then_expires_on_time(temporal, make_stack, roles: Roles, pg):
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    h, first, granted = await _granted_then_continued(temporal, stack, login, role)
    old = await temporal.client.get_workflow_handle(h.id, run_id=first).describe()
    assert old.status == WorkflowExecutionStatus.CONTINUED_AS_NEW
    # The ledger moved with the grant: the closed run no longer claims it, the new one does.
    assert old.typed_search_attributes.get(EXPIRES_AT) is None
    now = await h.describe()
    assert now.typed_search_attributes.get(EXPIRES_AT) == granted.expires_at
    carried = await get_status(temporal.client, h.id)
    assert carried.state == RequestState.GRANTED
    assert carried.expires_at == granted.expires_at and carried.decided_by == "dba@example.com"
    assert pg.is_member(login, role)
    rows = await list_requests(temporal.client, requester=f"{login}@example.com")
    assert [r["state"] for r in rows] == ["granted"], rows
    assert rows[0]["started"] == carried.requested_at.isoformat()  # when it was asked, not continued
    page = await page_requests(temporal.client, requester=f"{login}@example.com")
    assert page.total == 1 and page.rows[0].started == carried.requested_at, page
    window = (carried.requested_at - timedelta(minutes=1), datetime.now(UTC) + timedelta(minutes=1))
    audited = [r for r in await records(temporal.client, *window) if r["id"] == h.id]
    assert [(r["state"], r["requested_at"]) for r in audited] == [
        ("granted", carried.requested_at.isoformat())
    ]

    await temporal.fast_forward(h, timedelta(hours=8))
    final = await stack.wait_state(h.id, RequestState.EXPIRED, timeout=30)
    assert not pg.is_member(login, role)
    assert final.revoked_at is not None and granted.expires_at is not None
    assert final.revoked_at >= granted.expires_at
    assert final.granted_at == granted.granted_at


async def test_a_continued_grant_is_relinquished_and_extended(temporal, make_stack, roles: Roles, pg):
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    h, _, granted = await _granted_then_continued(temporal, stack, login, role)
    await stack.cli("relinquish", h.id, "--as", f"{login}@example.com")
    final = await stack.wait_state(h.id, RequestState.RELINQUISHED, timeout=30)
    assert not pg.is_member(login, role)
    assert final.revoked_at is not None and final.granted_at == granted.granted_at


async def test_the_reconciler_reads_a_continued_grant_and_leaves_it(temporal, make_stack, roles: Roles, pg):
    """The continued run's history has no check or grant: the reconciler reads them from its input."""
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    h, _, _ = await _granted_then_continued(temporal, stack, login, role, hours=1)
    check, grant = await TemporalActivities(temporal.client, ConfigStore(str(stack.config_path)))._results(h)
    assert check is not None and check.policy.target is not None and check.policy.target.instance == "pg"
    [(xmin,)] = pg.execute(
        "SELECT m.xmin::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE r.rolname = %s AND u.rolname = %s",
        [role, login],
    )
    assert grant is not None and grant.row_xmin == xmin
    result = await stack.cli("reconcile", "--instance", "pg")
    assert result.code == 0, result.err
    assert pg.is_member(login, role), result.out


async def test_nobody_can_start_a_run_that_holds_a_grant(temporal, make_stack, roles: Roles, pg):
    """A client that starts a request with a held grant in it gets a rejected request, no grant."""
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    h, _, _ = await _granted_then_continued(temporal, stack, login, role)
    events = [e async for e in h.fetch_history_events()]
    payloads = events[0].workflow_execution_started_event_attributes.input.payloads
    [carried] = DATA_CONVERTER.payload_converter.from_payloads(payloads, [AccessRequest])
    assert carried.held is not None
    other = roles.login("mallory")
    assert carried.held.status.db_user is not None
    carried.held.status.db_user = other
    forged = await temporal.client.execute_workflow(
        AccessRequestWorkflow.run, carried, id=f"forged/{other}", task_queue=stack.task_queue
    )
    assert forged.state == RequestState.REJECTED
    assert forged.error == "a held grant can only continue from its own request's run"
    assert not pg.is_member(other, role)
    await temporal.fast_forward(h, timedelta(hours=8))
    await stack.wait_state(h.id, RequestState.EXPIRED, timeout=30)
    assert not pg.is_member(login, role)
