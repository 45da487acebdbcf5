"""The reconciler: orphaned grants revoked, open ones and hand-made ones left alone."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql
from temporalio.client import ScheduleActionStartWorkflow

from rolecall.config import load
from rolecall.models import ReconcileReport, RequestState
from rolecall.schedules import ensure_reconcile_schedules, schedule_id
from tests.conftest import Roles, eventually


def _grant(pg, role: str, login: str, as_role: str | None = None) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        if as_role:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(as_role)))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(login)))


async def test_reconcile_revokes_orphans_only(make_stack, roles: Roles, pg) -> None:
    role = roles.role()
    orphan, active, by_hand = roles.login("orphan"), roles.login("active"), roles.login("hand")
    other_admin = roles.role("otheradmin")
    pg.execute(
        sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(sql.Identifier(role), sql.Identifier(other_admin))
    )
    stack = await make_stack([role])
    rid = await stack.request(active, role)
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.GRANTED)
    _grant(pg, role, orphan)  # behind rolecall's back, by rolecall's own admin login
    _grant(pg, role, by_hand, as_role=other_admin)  # by someone else

    r = await stack.cli("reconcile", "--instance", "pg", "--dry-run")
    assert r.code == 0, r.err
    assert f"would revoke: {role} from {orphan}" in r.out
    assert f"outside rolecall (left alone): {role} held by {by_hand}, granted by {other_admin}" in r.out
    assert active not in r.out.replace(f"held by {by_hand}", "")
    assert pg.is_member(orphan, role), "--dry-run changes nothing"

    r = await stack.cli("reconcile", "--instance", "pg")
    assert r.code == 0, r.err
    assert f"revoked: {role} from {orphan}" in r.out
    assert not pg.is_member(orphan, role)
    assert pg.is_member(active, role), "a grant with an open request is left alone"
    assert pg.is_member(by_hand, role), "a grant made outside rolecall is reported, not revoked"
    assert (await stack.status(rid)).state == RequestState.GRANTED


async def test_schedule_created_idempotently_and_runs(make_stack, roles: Roles, pg) -> None:
    role, orphan = roles.role(), roles.login("orphan")
    stack = await make_stack([role])
    config = load(stack.config_path)
    ids = await ensure_reconcile_schedules(stack.client, config, stack.task_queue)
    assert ids == [schedule_id(stack.task_queue, "pg")]
    assert await ensure_reconcile_schedules(stack.client, config, stack.task_queue) == ids
    handle = stack.client.get_schedule_handle(ids[0])
    desc = await handle.describe()
    assert desc.schedule.spec.intervals[0].every.total_seconds() == 300
    assert isinstance(desc.schedule.action, ScheduleActionStartWorkflow)

    _grant(pg, role, orphan)
    await handle.trigger()
    await eventually(lambda: not pg.is_member(orphan, role), timeout=30, what="the scheduled revoke")
    desc = await handle.describe()
    run = desc.info.recent_actions[-1].action
    h = stack.client.get_workflow_handle(run.workflow_id, result_type=ReconcileReport)
    report = await h.result()
    assert [m.member for m in report.revoked] == [orphan]
    await handle.delete()


async def test_reconcile_reports_to_the_log_when_it_revokes(make_stack, roles: Roles, pg, caplog) -> None:
    role, orphan = roles.role(), roles.login("orphan")
    stack = await make_stack([role], slack_channel=f"#c{uuid.uuid4().hex[:6]}")
    _grant(pg, role, orphan)
    with caplog.at_level("WARNING", logger="rolecall.notify"):
        r = await stack.cli("reconcile")
    assert r.code == 0, r.err
    assert any(f"revoked: {role} from {orphan}" in rec.getMessage() for rec in caplog.records)


async def test_reconcile_report_reaches_the_approvers_channel(make_stack, roles: Roles, pg) -> None:
    """Through the real SlackNotifier and a fake Slack that validates the Block Kit."""
    from tests.fake_slack import FakeSlack, text_of, web_client_for

    role, orphan, by_hand = roles.role(), roles.login("orphan"), roles.login("hand")
    other_admin = roles.role("otheradmin")
    pg.execute(
        sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(sql.Identifier(role), sql.Identifier(other_admin))
    )
    with FakeSlack() as fake:
        stack = await make_stack([role], slack_channel="CDBA", slack_client=web_client_for(fake))
        _grant(pg, role, orphan)
        _grant(pg, role, by_hand, as_role=other_admin)
        r = await stack.cli("reconcile")
        assert r.code == 0, r.err
        await eventually(lambda: bool(fake.channel_messages("CDBA")), 10, "the reconcile report")
        [message] = fake.channel_messages("CDBA")
        assert f"Revoked `{role}` from `{orphan}`" in text_of(message)
        [context] = [b for b in message["blocks"] if b["type"] == "context"]
        assert context["elements"][0]["text"] == (
            "Granted outside rolecall (left alone): "
            f"`{role}` → `{by_hand}`, `{role}` → `{other_admin}`"  # the delegated admin too
        )
        assert all(c.status == 200 for c in fake.calls_to("chat.postMessage"))
