"""Day two: extend a grant, warn before expiry, remind and escalate pending requests.

Real dev server (time skipping for the hour-long waits), real PostgreSQL, the CLI.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from rolecall.config import ConfigStore
from rolecall.models import Decision, RequestState
from rolecall.operations import handle
from tests.conftest import DECISION_KEY, Roles, eventually
from tests.test_durability import _notified_events
from worker import build_worker


def _row_xmin(pg, role: str, login: str) -> str:
    rows = pg.execute(
        """SELECT m.xmin::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
           JOIN pg_roles u ON u.oid = m.member WHERE r.rolname = %s AND u.rolname = %s""",
        [role, login],
    )
    return rows[0][0]


async def _granted(stack, login: str, role: str, duration: str = "1h") -> str:
    rid = await stack.request(login, role, duration)
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.GRANTED)
    return rid


async def test_an_auto_extension_moves_only_the_expiry(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], extend_approval="auto")
    rid = await _granted(stack, login, role)
    before = await stack.status(rid)
    row = _row_xmin(pg, role, login)
    r = await stack.cli("extend", rid, "--by", "30m", "--as", f"{login}@example.com", "--reason", "more")
    assert r.code == 0, r.err
    assert r.out.startswith("approved: extended by 30m, until ")
    status = await stack.status(rid)
    assert before.expires_at is not None and status.expires_at == before.expires_at + timedelta(minutes=30)
    [ext] = status.extensions
    assert (ext.asked_by, ext.added, ext.state, ext.decided_by, ext.via) == (
        f"{login}@example.com", timedelta(minutes=30), "approved", "auto", "cli"
    )  # fmt: skip
    assert _row_xmin(pg, role, login) == row, "the membership stayed: no revoke and re-grant"
    assert "extended" in await _notified_events(stack.client, rid)


async def test_an_extension_approved_and_denied_by_the_approvers(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await _granted(stack, login, role)
    before = await stack.status(rid)
    r = await stack.cli("extend", rid, "--by", "30m", "--as", f"{login}@example.com")
    assert r.code == 0, r.err
    assert r.out.strip() == "pending: asked the approvers for 30m more"
    r = await stack.cli("extend", rid, "--by", "10m", "--as", f"{login}@example.com")
    assert r.code == 2 and "an extension is already waiting for the approvers" in r.err
    r = await stack.cli("approve-extension", rid, "--as", f"{login}@example.com")
    assert r.code == 2 and "you can't decide on your own extension" in r.err
    r = await stack.cli("approve-extension", rid, "--as", "dba@example.com")
    assert r.code == 0, r.err
    await eventually(lambda: _ext_state(stack, rid, "approved"), 10, "the approval")
    status = await stack.status(rid)
    assert before.expires_at is not None and status.expires_at == before.expires_at + timedelta(minutes=30)
    assert status.extensions[0].decided_by == "dba@example.com"
    await stack.cli("extend", rid, "--by", "15m", "--as", f"{login}@example.com")
    r = await stack.cli("deny-extension", rid, "--as", "dba@example.com")
    assert r.code == 0, r.err
    await eventually(lambda: _ext_state(stack, rid, "denied"), 10, "the denial")
    assert (await stack.status(rid)).expires_at == status.expires_at
    assert pg.is_member(login, role)


async def _ext_state(stack, rid: str, state: str) -> bool:
    s = await stack.status(rid)
    return bool(s.extensions) and s.extensions[-1].state == state


async def test_the_caps_and_bad_input_are_refused_with_their_reasons(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], extend_approval="auto", max_total_duration="1h30m", max_extensions=1)
    rid = await _granted(stack, login, role)
    me = f"{login}@example.com"
    r = await stack.cli("extend", rid, "--by", "1h", "--as", me)
    assert r.code == 2
    assert r.err.strip() == (
        "rolecall: error: 1h more would pass the 1h30m this access may last in all; at most 30m is left"
    )
    for bad in ("0s", "-5m", "soon"):
        r = await stack.cli("extend", rid, "--by", bad, "--as", me)
        assert r.code == 2 and r.err.strip().splitlines()[-1].startswith("rolecall: error: "), (bad, r.err)
    r = await stack.cli("extend", rid, "--by", "10m", "--as", "mallory@example.com")
    assert r.code == 2 and f"only the requester ({me}) can extend this access" in r.err
    assert (await stack.cli("extend", rid, "--by", "10m", "--as", me)).code == 0
    r = await stack.cli("extend", rid, "--by", "10m", "--as", me)
    assert r.code == 2 and "already extended 1 times (the most rule default allows)" in r.err
    assert len((await stack.status(rid)).extensions) == 1, "refusals change nothing"


async def test_relinquish_wins_over_a_pending_extension(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await _granted(stack, login, role)
    await stack.cli("extend", rid, "--by", "30m", "--as", f"{login}@example.com")
    await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
    status = await stack.wait_state(rid, RequestState.RELINQUISHED)
    assert status.extensions[0].state == "relinquished"
    assert not pg.is_member(login, role)
    r = await stack.cli("approve-extension", rid, "--as", "dba@example.com")
    assert r.code == 2


async def test_an_extension_approved_with_the_expiry_loses(make_stack, roles: Roles, pg) -> None:
    """Both reach the workflow while no worker runs: the expiry wins, the grant ends on time."""
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], worker=False)

    def worker():
        return build_worker(
            stack.client, ConfigStore(stack.config_path), stack.task_queue, decision_key=DECISION_KEY
        )

    async with worker():
        rid = await _granted(stack, login, role, "3s")
        await stack.cli("extend", rid, "--by", "1m", "--as", f"{login}@example.com")
        await eventually(lambda: _ext_state(stack, rid, "pending"), 10, "the pending extension")
    await asyncio.sleep(3.5)
    await handle(stack.client, rid).signal("approve_extension", Decision(actor="dba@example.com"))
    async with worker():
        status = await stack.wait_state(rid, RequestState.EXPIRED)
    assert status.extensions[0].state == "expired"
    assert [r.signal for r in status.refused] == ["approve_extension"], "refused, recorded"
    assert not pg.is_member(login, role)


async def test_the_expiry_warning_is_sent_once_and_again_after_an_extension(
    make_stack, roles: Roles, pg
) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], extend_approval="auto", expiry_warning="2s")
    rid = await _granted(stack, login, role, "4s")

    async def warnings() -> int:
        return (await _notified_events(stack.client, rid)).count("expiring")

    await eventually(lambda: _count_at_least(warnings, 1), 10, "the first warning")
    r = await stack.cli("extend", rid, "--by", "4s", "--as", f"{login}@example.com")
    assert r.code == 0, r.err
    await stack.wait_state(rid, RequestState.EXPIRED, timeout=20)
    assert await warnings() == 2
    assert not pg.is_member(login, role)


async def _count_at_least(count, n: int) -> bool:
    return (await count()) >= n


async def test_reminders_and_escalation_stop_at_the_decision(temporal, make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack(
        [role],
        remind_approvers_after="30m",
        escalate_after="2h",
        escalate_to=["#db-escalations", "oncall-lead@example.com"],
    )
    rid = await stack.request(login, role)
    h = temporal.client.get_workflow_handle(rid)
    await temporal.fast_forward(h, timedelta(hours=2, minutes=5))
    await eventually(lambda: _has(stack, rid, "escalated"), 20, "the escalation")
    events = await _notified_events(stack.client, rid)
    assert events.count("reminder") == 4  # at 30m, 1h, 1h30m, 2h
    status = await stack.status(rid)
    assert status.escalated_at is not None and status.reminded == 4
    assert "oncall-lead@example.com" in status.approvers, "escalated to: may decide from then on"
    r = await stack.cli("approve", rid, "--as", "oncall-lead@example.com")
    assert r.code == 0, r.err
    await stack.wait_state(rid, RequestState.GRANTED)
    await temporal.fast_forward(h, timedelta(minutes=50))
    assert (await _notified_events(stack.client, rid)).count("reminder") == 4, "stopped at the decision"
    assert pg.is_member(login, role)


async def _has(stack, rid: str, event: str) -> bool:
    return event in await _notified_events(stack.client, rid)
