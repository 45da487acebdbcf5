"""Slack and PagerDuty misbehaving for a whole lifecycle: grant and revoke stay on time.

Already covered elsewhere: a few 429/500/hanging Slack calls around one grant
(tests/test_slack_notify.py) and each PagerDuty failure on its own (tests/test_pagerduty.py).
Here every Slack method rolecall uses fails from the request to the revoke, and PagerDuty
answers 500, 429 or hangs, one mode per request, three requests at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio.client import WorkflowExecutionStatus

from rolecall.models import RequestState
from tests.conftest import Roles, eventually
from tests.fake_pagerduty import FakePagerDuty
from tests.fake_slack import ALICE, World, text_of, world_context
from tests.faults.support import assert_no_grant_left_behind

POLICY = "PEPFAULT1"
SLACK_METHODS = ["chat.postMessage", "chat.update", "conversations.open", "users.lookupByEmail"]


async def test_slack_and_pagerduty_failing_throughout(make_stack, roles: Roles, pg) -> None:
    """Bound: granted within 5 s of each approval, revoked no later than expiry + 5 s.

    Then Slack recovers, and every requester is told how their request ended (the DM and
    the delivered `expired` notification); until then the workflow keeps retrying them.
    """
    extra_roles = [roles.role("b"), roles.role("c")]
    with FakePagerDuty() as pd:
        section = pd.section(escalation_policy_ids=[POLICY], timeout=1)
        async with world_context(make_stack, roles, more_roles=extra_roles, sections=section) as w:
            pd.add_oncall(pd.add_user(w.email), (POLICY, "Databases"))  # on call: PD would auto-approve
            for method in SLACK_METHODS:
                w.fake.hang(method, 6, times=1)  # longer than the client's 5 s timeout
                w.fake.fail(method, 429, times=2, retry_after=1)
                w.fake.fail(method, 500, times=10_000)
            rids = []
            faults: list[int | str] = [500, 429, "hang"]
            for role, fault in zip([w.role, *extra_roles], faults, strict=True):
                if isinstance(fault, int):
                    pd.fail_with(fault)
                else:
                    pd.hang()
                rid = await w.stack.request(w.login, role, "4s")
                await eventually(_oncall_failed(w, rid), 15, f"the on-call check of {rid} to fail")
                rids.append(rid)
            for rid in rids:
                status = await w.stack.status(rid)
                assert status.state == RequestState.PENDING and not status.auto_approved
                approved = time.monotonic()
                r = await w.stack.cli("approve", rid, "--as", "dba@example.com")
                assert r.code == 0, r.err
                await w.stack.wait_state(rid, RequestState.GRANTED, timeout=10)
                assert time.monotonic() - approved < 5, "the grant waited for Slack"
            finals = [await w.stack.wait_state(rid, RequestState.EXPIRED, timeout=20) for rid in rids]
            for final in finals:
                assert final.revoked_at is not None and final.expires_at is not None
                assert final.revoked_at - final.expires_at <= timedelta(seconds=5)
                assert not pg.is_member(w.login, final.role)
            assert all(c.status != 200 for c in w.fake.calls if c.method in SLACK_METHODS)

            with w.fake._lock:  # Slack is back
                w.fake.faults.clear()
            dm = f"D{ALICE}"
            await eventually(
                lambda: sum("Your access has expired" in text_of(m) for m in w.posts(dm)) == len(rids),
                60,
                "each requester DM telling the access expired",
            )
            for rid, role in zip(rids, [w.role, *extra_roles], strict=True):
                final = await w.stack.wait_state(rid, RequestState.EXPIRED)
                await eventually(_closed(w, rid), 30, f"{rid} to close")
                final = await w.stack.status(rid)
                await assert_no_grant_left_behind(
                    w.stack.client, pg, final, w.login, role, timedelta(seconds=5)
                )


def _oncall_failed(w: World, rid: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return "could not be done" in (await w.stack.status(rid)).on_call_detail

    return check


def _closed(w: World, rid: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        desc = await w.stack.client.get_workflow_handle(rid).describe()
        return desc.status == WorkflowExecutionStatus.COMPLETED

    return check
