"""Who really decided: signed Slack decisions verified by the worker, and no decision lost.

Signatures are made here with rolecall.signing and the tests' DECISION_KEY, exactly as the
Slack app makes them; the worker verifies them in a local activity.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from rolecall.models import Decision, RequestState
from rolecall.operations import handle
from rolecall.signing import sign
from tests.conftest import DECISION_KEY, Roles, eventually
from tests.faults.support import HoldingProxy
from worker import build_worker


def _slack(rid: str, signal: str, actor: str = "dba@example.com", at: datetime | None = None) -> Decision:
    d = Decision(actor=actor, via="slack", slack_user_id="UDBA")
    return sign(DECISION_KEY, rid, signal, d, at or datetime.now(UTC))


async def _wait_refused(stack, rid: str, n: int):
    deadline = time.monotonic() + 15
    while True:
        status = await stack.status(rid)
        if len(status.refused) >= n or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


async def test_a_signed_slack_decision_is_verified_and_recorded(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role)
    await handle(stack.client, rid).signal("approve", _slack(rid, "approve"))
    status = await stack.wait_state(rid, RequestState.GRANTED)
    assert status.decided_by == "dba@example.com"
    assert status.decided_via == "slack (verified)"
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    r = await stack.cli("audit", "--since", since, "--format", "jsonl")
    assert r.code == 0, r.err
    assert '"decided_via": "slack (verified)"' in r.out


async def test_edited_replayed_stale_and_moved_signatures_are_refused(make_stack, roles: Roles, pg) -> None:
    role, login, other = roles.role(), roles.login(), roles.login("bob")
    stack = await make_stack([role])
    rid = await stack.request(login, role)
    other_rid = await stack.request(other, role)
    h = handle(stack.client, rid)
    edited = _slack(rid, "approve").model_copy(update={"actor": "dba2@example.com"})
    stale = _slack(rid, "approve", at=datetime.now(UTC) - timedelta(minutes=10))
    moved = _slack(other_rid, "approve")
    as_deny = _slack(rid, "approve")
    for d in (edited, stale, moved):
        await h.signal("approve", d)
    await h.signal("deny", as_deny)  # an approval's signature presented as a deny
    status = await _wait_refused(stack, rid, 4)
    assert status.state == RequestState.PENDING
    whys = [r.why for r in status.refused]
    assert whys[0].startswith("Slack signature refused: signature does not match")
    assert whys[1].startswith("Slack signature refused: signature is 600s old") or "s old" in whys[1]
    assert whys[2].startswith("Slack signature refused: signature does not match")
    assert whys[3].startswith("Slack signature refused: signature does not match")
    good = _slack(rid, "approve")
    await h.signal("approve", good)
    await stack.wait_state(rid, RequestState.GRANTED)
    await h.signal("approve", good)  # the same signed decision again
    status = await _wait_refused(stack, rid, 5)
    assert status.refused[4].why == "this signed decision was already used (replayed)"
    assert status.decided_via == "slack (verified)"


async def test_only_verified_decisions_count_when_the_instance_says_so(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], accept_unverified_decisions=False)
    rid = await stack.request(login, role)
    r = await stack.cli("approve", rid, "--as", "dba@example.com")
    assert r.code == 2
    assert r.err.strip() == (
        "rolecall: error: instance 'pg' accepts only decisions made in Slack and verified by rolecall; "
        "this one is from the CLI"
    )
    h = handle(stack.client, rid)
    await h.signal("approve", Decision(actor="dba@example.com", via="slack"))  # unsigned "Slack"
    status = await _wait_refused(stack, rid, 1)
    assert status.state == RequestState.PENDING
    assert status.refused[0].via == "unverified"
    assert "accepts only decisions made in Slack and verified" in status.refused[0].why
    r = await stack.cli("cancel", rid, "--as", f"{login}@example.com")
    assert r.code == 2, "the CLI can't cancel either"
    await h.signal("approve", _slack(rid, "approve"))
    status = await stack.wait_state(rid, RequestState.GRANTED)
    assert status.decided_via == "slack (verified)"


async def test_a_deny_during_the_on_call_check_wins_over_the_auto_approval(
    make_stack, roles: Roles, pg, fake_pd
) -> None:
    role, login = roles.role(), roles.login()
    user = fake_pd.add_user(f"{login}@example.com")
    fake_pd.add_oncall(user)
    fake_pd.slow(3)
    stack = await make_stack([role], sections=fake_pd.section(timeout=10))
    r = await stack.cli(
        "request", "--instance", "pg", "--role", role, "--duration", "1h", "--as", f"{login}@example.com"
    )
    assert r.code == 0, r.err
    rid = r.last_line
    assert (await stack.status(rid)).state == RequestState.PENDING
    await stack.cli("deny", rid, "--as", "dba@example.com", "--reason", "not today")
    status = await stack.wait_state(rid, RequestState.DENIED, timeout=20)
    assert not status.auto_approved
    assert status.decided_by == "dba@example.com"
    assert "not used: dba@example.com decided first" in status.on_call_detail
    assert not pg.is_member(login, role)


async def test_an_approval_in_the_same_task_as_the_timeout_wins(make_stack, roles: Roles, pg) -> None:
    """Both reach the workflow while no worker runs: one task holds the timer and the signal."""
    from rolecall.config import ConfigStore

    role, login, late = roles.role(), roles.login(), roles.login("late")
    stack = await make_stack([role], worker=False, approval_timeout="2s")

    def worker():
        return build_worker(
            stack.client, ConfigStore(stack.config_path), stack.task_queue, decision_key=DECISION_KEY
        )

    async with worker():
        rid = await stack.request(login, role)
        late_rid = await stack.request(late, role)
    await asyncio.sleep(3)  # both approval timers fire on the server meanwhile
    await handle(stack.client, rid).signal("approve", _slack(rid, "approve"))
    async with worker():
        status = await stack.wait_state(rid, RequestState.GRANTED, RequestState.TIMED_OUT)
        assert status.state == RequestState.GRANTED, "the approval that arrived with the timeout wins"
        assert pg.is_member(login, role)
        # Once the timeout was handled (the request closed), an approval gets one clear line.
        await stack.wait_state(late_rid, RequestState.TIMED_OUT)
        r = await stack.cli("approve", late_rid, "--as", "dba@example.com")
        assert r.code == 2
        assert r.err.strip() == "rolecall: error: this request is already timed out"
        assert not pg.is_member(late, role)
        await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
        await stack.wait_state(rid, RequestState.RELINQUISHED)


async def test_cancel_while_the_grant_is_in_flight_revokes_after_the_late_grant(
    make_stack, roles: Roles, pg
) -> None:
    role, login = roles.role(), roles.login()
    proxy = HoldingProxy(pg.dsn)
    await proxy.start()
    try:
        stack = await make_stack([role], dsn=proxy.dsn, connect_timeout=2)
        rid = await stack.request(login, role)
        proxy.hold(b'GRANT "')
        await stack.cli("approve", rid, "--as", "dba@example.com")
        await eventually(lambda: bool(proxy.held), 20, "the GRANT to reach the proxy")
        await handle(stack.client, rid).cancel()
        await asyncio.sleep(3)  # the cancel reaches the activity (heartbeat); it must keep waiting
        assert (await stack.status(rid)).state == RequestState.APPROVED, "no revoke before the GRANT"
        proxy.release(forward=True)  # the late GRANT commits now
        status = await stack.wait_state(rid, RequestState.CANCELLED, timeout=30)
        assert status.revoked_at is not None
        assert status.decision_reason == "workflow cancelled by an operator while granting"
        assert not pg.is_member(login, role), "the revoke ran after the late GRANT, not before"
    finally:
        proxy.release(forward=False)
        await proxy.stop()


async def test_a_decision_with_a_field_this_worker_does_not_know_counts(make_stack, roles: Roles, pg) -> None:
    """Rolling deploys: a newer Slack app or CLI may send fields an older worker lacks."""
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role)
    await handle(stack.client, rid).signal(
        "approve", {"actor": "dba@example.com", "via": "cli", "approval_note_v9": "from the future"}
    )
    status = await stack.wait_state(rid, RequestState.GRANTED)
    assert status.decided_by == "dba@example.com" and status.decided_via == "cli"
