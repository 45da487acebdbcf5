"""Approver groups at organisation scale: a 200-member group, and a member removed from it
after the request was made can no longer approve (checked at decision time)."""

from __future__ import annotations

import time

from rolecall import slack_blocks as kit
from rolecall.models import RequestState
from tests.conftest import Roles, eventually
from tests.fake_slack import APPROVERS_CHANNEL, world_context


async def test_a_member_removed_from_the_group_can_no_longer_approve(make_stack, roles: Roles, pg) -> None:
    async with world_context(make_stack, roles, approver_groups=["SBIG"]) as w:
        members = [f"UM{i:03d}" for i in range(200)]
        for i, user in enumerate(members):
            w.fake.add_user(user, f"member{i}@example.com", f"Member {i}")
        w.fake.groups["SBIG"] = list(members)
        started = time.monotonic()
        rid = await w.stack.request(w.login, w.role)
        took = time.monotonic() - started  # reported, not asserted: benchmarks measure speed
        status = await w.stack.status(rid)
        assert len(status.approvers) == 201 and "member199@example.com" in status.approvers
        print(f"request with a 200-member approver group checked in {took:.2f} s")

        w.fake.groups["SBIG"] = members[1:]  # member0 leaves the group
        await eventually(lambda: len(w.posts(APPROVERS_CHANNEL)) == 1, 15, "the approvers' message")
        msg = w.posts(APPROVERS_CHANNEL)[0]
        await w.slack.click(members[0], kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        await eventually(lambda: _refused(w, rid), 15, "the refusal")
        status = await w.stack.status(rid)
        assert status.state == RequestState.PENDING
        assert status.refused[-1].why == "member0@example.com is no longer in the approver group(s) SBIG"
        await w.slack.click(members[1], kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        status = await w.stack.wait_state(rid, RequestState.GRANTED, timeout=20)
        assert status.decided_by == "member1@example.com"


async def _refused(w, rid: str) -> bool:
    return bool((await w.stack.status(rid)).refused)
