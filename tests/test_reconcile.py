"""The reconciler revokes only what rolecall can prove it granted, and strands nothing.

Proof is two facts: the ledger (a request in Temporal that granted this role to this login is
past its expiry plus the grace period without a verified revoke) and the row itself (the
pg_auth_members row that request's GRANT left, by its xmin and grantor). Every test here runs
on both PostgreSQL 15 and 16, under a superuser admin login and under the setup-sql login.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from temporalio import workflow
from temporalio.client import ScheduleActionStartWorkflow
from temporalio.worker import Worker

from activities.notify import NotifyActivities
from activities.postgres import PostgresActivities
from activities.temporal import TemporalActivities
from rolecall.config import ConfigStore, load
from rolecall.models import ReconcileReport, RequestState, RequestStatus
from rolecall.schedules import ensure_reconcile_schedules, schedule_id
from tests.conftest import Roles, Stack, eventually
from workflows.reconcile import ReconcileWorkflow

GRACE = {"reconcile": {"grace": "1s"}}


def _grant(dsn: str, role: str, login: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(login)))


def _alive(session: psycopg.Connection[Any]) -> bool:
    try:
        session.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


async def _admin_dsn(kind: str, make_stack, roles: Roles, pg, role: str) -> str | None:
    """None: the test database's superuser. "setup-sql": the least-privilege login it prints."""
    if kind == "superuser":
        return None
    admin = roles.name("admin")
    roles.created.append(admin)
    bootstrap = await make_stack([role], worker=False)
    r = await bootstrap.cli("setup-sql", "--instance", "pg", "--login", admin)
    assert r.code == 0, r.err
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(r.out.encode())
    return make_conninfo(pg.dsn, user=admin)


async def _expire_after_termination(stack: Stack, rid: str) -> RequestStatus:
    """Terminate a granted request (its revoke will never run) and wait out expiry + grace."""
    status = await stack.wait_state(rid, RequestState.GRANTED)
    await stack.client.get_workflow_handle(rid).terminate(reason="test: stranded grant")
    assert status.expires_at is not None
    wait = status.expires_at.timestamp() + 1.5 - time.time()
    await asyncio.sleep(max(0.0, wait))
    return status


@pytest.mark.parametrize("admin", ["superuser", "setup-sql"])
async def test_hand_made_memberships_survive_reconcile_with_their_sessions(
    make_stack, roles: Roles, pg, admin: str
) -> None:
    """The reported defect: `GRANT analytics_ro TO svc_metabase` by hand, then reconcile."""
    role, svc, person, alice = roles.role(), roles.login("svc"), roles.login("person"), roles.login()
    dsn = await _admin_dsn(admin, make_stack, roles, pg, role)
    stack = await make_stack([role], dsn=dsn, sections=GRACE)
    rid = await stack.request(alice, role)
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.GRANTED)
    _grant(pg.dsn, role, svc)  # by a superuser (on 16 recorded as the bootstrap superuser)
    _grant(dsn or pg.dsn, role, person)  # with rolecall's own admin login, by hand
    sessions = [pg.connect_as(svc), pg.connect_as(person)]

    r = await stack.cli("reconcile", "--instance", "pg", "--dry-run")
    assert r.code == 0, r.err
    assert "would revoke" not in r.out
    assert "reconcile pg: 0 stranded grant(s)" in r.out
    for login in (svc, person):
        assert f"{role} held by {login}, granted by" in r.out
    assert "(left alone)" in r.out

    r = await stack.cli("reconcile", "--instance", "pg")
    assert r.code == 0, r.err
    assert "revoked:" not in r.out
    assert pg.is_member(svc, role) and pg.is_member(person, role), "hand-made grants are never touched"
    assert all(_alive(s) for s in sessions), "and their sessions are never ended"
    assert pg.is_member(alice, role), "an open request's grant is left to its workflow"
    assert (await stack.status(rid)).state == RequestState.GRANTED
    for s in sessions:
        s.close()


@pytest.mark.parametrize("admin", ["superuser", "setup-sql"])
async def test_a_terminated_request_is_revoked_after_expiry_plus_grace(
    make_stack, roles: Roles, pg, admin: str
) -> None:
    from tests.fake_slack import FakeSlack, text_of, web_client_for

    role, alice, svc = roles.role(), roles.login(), roles.login("svc")
    dsn = await _admin_dsn(admin, make_stack, roles, pg, role)
    channel = f"C{uuid.uuid4().hex[:8].upper()}"
    with FakeSlack() as fake:
        stack = await make_stack(
            [role], dsn=dsn, sections=GRACE, slack_channel=channel, slack_client=web_client_for(fake)
        )
        rid = await stack.request(alice, role, "4s")
        await stack.cli("approve", rid, "--as", "dba@example.com")
        status = await stack.wait_state(rid, RequestState.GRANTED)
        _grant(pg.dsn, role, svc)
        bystander = pg.connect_as(svc)
        session = pg.connect_as(alice)
        await stack.client.get_workflow_handle(rid).terminate(reason="test")

        r = await stack.cli("reconcile", "--instance", "pg")
        assert r.code == 0, r.err
        assert pg.is_member(alice, role), "before expiry + grace the grant runs its course"

        assert status.expires_at is not None
        await asyncio.sleep(max(0.0, status.expires_at.timestamp() + 1.5 - time.time()))
        r = await stack.cli("reconcile", "--instance", "pg", "--dry-run")
        assert f"would revoke: {role} from {alice} (request {rid}, terminated," in r.out
        assert pg.is_member(alice, role)

        r = await stack.cli("reconcile", "--instance", "pg")
        assert r.code == 0, r.err
        assert f"revoked: {role} from {alice} (request {rid}, terminated," in r.out
        assert not pg.is_member(alice, role)
        assert not _alive(session), "verified like the workflow's own revoke: sessions ended"
        assert pg.is_member(svc, role) and _alive(bystander), "the hand-made grant is untouched"
        await eventually(lambda: bool(fake.channel_messages(channel)), 10, "the approvers' alert")
        [alert] = fake.channel_messages(channel)[-1:]
        assert f"Revoked `{role}` from `{alice}`: request `{rid}` (terminated)" in text_of(alert)

        # The ledger entry stays (a terminated workflow can't update it), but it names a row
        # that is gone: a later hand grant of the same role to the same login is not rolecall's.
        _grant(dsn or pg.dsn, role, alice)
        r = await stack.cli("reconcile", "--instance", "pg")
        assert r.code == 0, r.err
        assert "revoked:" not in r.out
        assert pg.is_member(alice, role)
        bystander.close()


@workflow.defn(name="AccessRequestWorkflow", sandboxed=False)
class _BrokenRelease:
    """A release whose workflow code fails every task of every running request."""

    @workflow.run
    async def run(self, req: Any) -> Any:
        raise RuntimeError("a bug in the new release")


async def test_a_request_whose_tasks_keep_failing_is_revoked(make_stack, roles: Roles, pg) -> None:
    role, alice = roles.role(), roles.login()
    stack = await make_stack([role], worker=False, sections=GRACE)
    from worker import build_worker

    config = ConfigStore(stack.config_path)
    async with build_worker(stack.client, config, stack.task_queue):
        rid = await stack.request(alice, role, "3s")
        await stack.cli("approve", rid, "--as", "dba@example.com")
        status = await stack.wait_state(rid, RequestState.GRANTED)
    postgres, temporal = PostgresActivities(config), TemporalActivities(stack.client, config)
    notify = NotifyActivities()
    broken = Worker(
        stack.client,
        task_queue=stack.task_queue,
        workflows=[_BrokenRelease, ReconcileWorkflow],
        activities=[
            postgres.list_memberships,
            postgres.revoke_role,
            temporal.ledger,
            notify.report,
        ],
        max_cached_workflows=0,
    )
    async with broken:
        assert status.expires_at is not None
        await asyncio.sleep(max(0.0, status.expires_at.timestamp() + 1.5 - time.time()))
        desc = await stack.client.get_workflow_handle(rid).describe()
        assert desc.status is not None and desc.status.name == "RUNNING", "stuck, not closed"
        assert pg.is_member(alice, role), "the failing workflow never revokes"
        r = await stack.cli("reconcile", "--instance", "pg")
        assert r.code == 0, r.err
        assert f"revoked: {role} from {alice} (request {rid}, running," in r.out
        assert not pg.is_member(alice, role)
        await stack.client.get_workflow_handle(rid).terminate(reason="test over")


async def test_schedule_created_idempotently_and_sweeps_stranded_grants(make_stack, roles: Roles, pg) -> None:
    role, alice = roles.role(), roles.login()
    stack = await make_stack([role], sections=GRACE)
    config = load(stack.config_path)
    ids = await ensure_reconcile_schedules(stack.client, config, stack.task_queue)
    assert ids == [schedule_id(stack.task_queue, "pg")]
    assert await ensure_reconcile_schedules(stack.client, config, stack.task_queue) == ids
    handle = stack.client.get_schedule_handle(ids[0])
    desc = await handle.describe()
    assert desc.schedule.spec.intervals[0].every.total_seconds() == 300
    assert isinstance(desc.schedule.action, ScheduleActionStartWorkflow)

    rid = await stack.request(alice, role, "3s")
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await _expire_after_termination(stack, rid)
    await handle.trigger()
    await eventually(lambda: not pg.is_member(alice, role), timeout=30, what="the scheduled revoke")
    desc = await handle.describe()
    run = desc.info.recent_actions[-1].action
    h = stack.client.get_workflow_handle(run.workflow_id, result_type=ReconcileReport)
    report = await h.result()
    assert [(g.request_id, g.login) for g in report.revoked] == [(rid, alice)]
    await handle.delete()


async def test_two_deployments_in_one_namespace_reconcile_their_same_named_instances_apart(
    make_stack, roles: Roles
) -> None:
    """Two task queues (deployments) in one namespace, each with an instance "pg", triggered in
    the same second: both runs start (no worker takes them here, so both stay running), and
    their workflow IDs differ in more than the time the scheduler appends."""
    stack = await make_stack([roles.role()])
    config = load(stack.config_path)
    queues = [f"{stack.task_queue}-a", f"{stack.task_queue}-b"]
    handles = [
        stack.client.get_schedule_handle((await ensure_reconcile_schedules(stack.client, config, q))[0])
        for q in queues
    ]
    try:
        await asyncio.gather(*(h.trigger() for h in handles))

        async def running() -> list[str]:
            return [a.workflow_id for h in handles for a in (await h.describe()).info.running_actions]

        async def both_running() -> bool:
            return len(await running()) == 2

        await eventually(both_running, timeout=15, what="both deployments' reconcile runs")
        ids = await running()
        assert ids[0].rsplit("-", 3)[0] != ids[1].rsplit("-", 3)[0], ids
        assert all(q in wf_id for q, wf_id in zip(queues, ids, strict=True)), ids
        for wf_id in ids:
            await stack.client.get_workflow_handle(wf_id).terminate(reason="test over")
    finally:
        for h in handles:
            await h.delete()


async def test_reconcile_logs_what_it_revokes_without_slack(make_stack, roles: Roles, pg, caplog) -> None:
    role, alice = roles.role(), roles.login()
    stack = await make_stack([role], slack_channel=f"#c{uuid.uuid4().hex[:6]}", sections=GRACE)
    rid = await stack.request(alice, role, "3s")
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await _expire_after_termination(stack, rid)
    with caplog.at_level("WARNING", logger="rolecall.notify"):
        r = await stack.cli("reconcile")
    assert r.code == 0, r.err
    assert any(f"revoked: {role} from {alice}" in rec.getMessage() for rec in caplog.records)


async def test_reconcile_report_names_what_it_left_alone(make_stack, roles: Roles, pg) -> None:
    """Through the real SlackNotifier and a fake Slack that validates the Block Kit."""
    from tests.fake_slack import FakeSlack, text_of, web_client_for

    role, alice, by_hand = roles.role(), roles.login(), roles.login("hand")
    other_admin = roles.role("otheradmin")
    pg.execute(
        sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(sql.Identifier(role), sql.Identifier(other_admin))
    )
    with FakeSlack() as fake:
        stack = await make_stack(
            [role], slack_channel="CDBA", slack_client=web_client_for(fake), sections=GRACE
        )
        rid = await stack.request(alice, role, "3s")
        await stack.cli("approve", rid, "--as", "dba@example.com")
        await _expire_after_termination(stack, rid)
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(other_admin)))
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(by_hand)))
        r = await stack.cli("reconcile")
        assert r.code == 0, r.err
        await eventually(lambda: bool(fake.channel_messages("CDBA")), 10, "the reconcile report")
        message = fake.channel_messages("CDBA")[-1]
        assert f"Revoked `{role}` from `{alice}`" in text_of(message)
        [context] = [b for b in message["blocks"] if b["type"] == "context"]
        assert context["elements"][0]["text"] == (
            "Granted outside rolecall's requests (left alone): "
            f"`{role}` → `{by_hand}`, `{role}` → `{other_admin}`"  # the delegated admin too
        )
        assert all(c.status == 200 for c in fake.calls_to("chat.postMessage"))
        assert pg.is_member(by_hand, role)
