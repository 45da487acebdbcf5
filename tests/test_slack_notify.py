"""Slack failing (429, 500, hanging) never delays a grant or a revoke; approver groups."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from rolecall import slack_blocks as kit
from rolecall.models import RequestState
from tests.conftest import Roles, eventually
from tests.fake_slack import ALICE, APPROVERS_CHANNEL, action_ids, text_of, world_context


async def test_429_and_500_on_notifications_do_not_delay_grant_or_revoke(
    make_stack, roles: Roles, pg
) -> None:
    async with world_context(make_stack, roles) as w:
        # Every message post: first rate limited twice (Retry-After: 2), then two server errors.
        w.fake.fail("chat.postMessage", 429, times=2, retry_after=2)
        w.fake.fail("chat.postMessage", 500, times=2)
        w.fake.fail("chat.update", 500, times=1)
        rid = await w.stack.request(w.login, w.role, "4s")
        approved_at = time.monotonic()
        r = await w.stack.cli("approve", rid, "--as", "dba@example.com")
        assert r.code == 0, r.err
        status = await w.stack.wait_state(rid, RequestState.GRANTED, timeout=10)
        assert time.monotonic() - approved_at < 5, "the grant waited for Slack"
        assert pg.is_member(w.login, w.role)
        status = await w.stack.wait_state(rid, RequestState.EXPIRED, timeout=20)
        assert not pg.is_member(w.login, w.role)
        assert status.revoked_at and status.expires_at
        assert status.revoked_at - status.expires_at < timedelta(seconds=5)

        # Once Slack recovers, everything arrives, once, and ends current.
        def settled() -> bool:
            msgs = w.posts(APPROVERS_CHANNEL)
            return len(msgs) == 1 and "expired and was revoked" in text_of(msgs[0])

        await eventually(settled, 40, "the approvers' message to show the expiry")
        assert action_ids(w.posts(APPROVERS_CHANNEL)[0]) == []
        dm = f"D{ALICE}"
        await eventually(lambda: len(w.posts(dm)) == 3, 30, "requester DM, grant DM, expiry DM")
        confirm, grant, expired = w.posts(dm)
        assert action_ids(confirm) == [] and action_ids(grant) == []
        assert "expired" in text_of(grant) and "Your access has expired" in text_of(expired)
        # Slack's Retry-After was honoured: each retry came at least a second later.
        posts = w.fake.calls_to("chat.postMessage")
        assert [c.status for c in posts[:5]] == [429, 429, 500, 500, 200]
        assert posts[1].at - posts[0].at >= 1.9 and posts[2].at - posts[1].at >= 1.9


async def test_hanging_slack_does_not_delay_grant(make_stack, roles: Roles, pg) -> None:
    async with world_context(make_stack, roles) as w:
        w.fake.hang("chat.postMessage", 7, times=2)  # longer than the client's 5 s timeout
        rid = await w.stack.request(w.login, w.role, "1h")
        await w.stack.cli("approve", rid, "--as", "dba@example.com")
        started = time.monotonic()
        await w.stack.wait_state(rid, RequestState.GRANTED, timeout=10)
        assert time.monotonic() - started < 5
        assert pg.is_member(w.login, w.role)
        await w.stack.cli("relinquish", rid, "--as", w.email)
        await w.stack.wait_state(rid, RequestState.RELINQUISHED, timeout=10)
        assert not pg.is_member(w.login, w.role)


async def test_approver_groups_come_from_slack(make_stack, roles: Roles, pg) -> None:
    async with world_context(make_stack, roles, approver_groups=["SDBAS"]) as w:
        w.fake.add_user("UCAROL", "Carol@Example.com", "Carol")
        w.fake.add_user("UGHOST", None, "No email")
        w.fake.groups["SDBAS"] = ["UCAROL", "UGHOST"]
        rid = await w.stack.request(w.login, w.role)
        status = await w.stack.status(rid)
        assert status.approvers == ["carol@example.com", "dba@example.com"]
        await eventually(lambda: len(w.posts(APPROVERS_CHANNEL)) == 1, 15, "the approvers' message")
        msg = w.posts(APPROVERS_CHANNEL)[0]
        await w.slack.click("UCAROL", kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        status = await w.stack.wait_state(rid, RequestState.GRANTED, timeout=20)
        assert status.decided_by == "carol@example.com"
        assert pg.is_member(w.login, w.role)


async def test_unknown_approver_group_leaves_listed_approvers(make_stack, roles: Roles) -> None:
    async with world_context(make_stack, roles, approver_groups=["SNOPE"]) as w:
        rid = await w.stack.request(w.login, w.role)
        status = await w.stack.status(rid)
        # The listed approvers still apply (the workflow logs why the group was not read).
        assert status.approvers == ["dba@example.com"]
        assert status.state == RequestState.PENDING


async def test_a_rate_limited_channel_does_not_make_a_notification_repeat_itself(
    make_stack, roles: Roles, pg
) -> None:
    """A retry after a 429 goes on from where its attempt stopped.

    The relinquish notification updates two messages in the requester's DM and posts a third.
    At one call per 3 s on that channel, an attempt that made every update again would meet
    the limit again each time and never finish (seen at 141 attempts in the burst figure).
    """
    async with world_context(make_stack, roles) as w:
        rid = await w.stack.request(w.login, w.role, "1h")
        r = await w.stack.cli("approve", rid, "--as", "dba@example.com")
        assert r.code == 0, r.err
        await w.stack.wait_state(rid, RequestState.GRANTED)
        dm = f"D{ALICE}"
        await eventually(lambda: len(w.posts(dm)) == 2, 20, "requester DM and grant DM")
        mark = len(w.fake.calls)
        w.fake.rate_limit(per_channel_per_second=1 / 3, burst=1)
        r = await w.stack.cli("relinquish", rid, "--as", f"{w.login}@example.com")
        assert r.code == 0, r.err
        await w.stack.wait_state(rid, RequestState.RELINQUISHED)
        await asyncio.wait_for(w.stack.client.get_workflow_handle(rid).result(), 60)
        w.fake.rate_limit(None)
        assert len(w.posts(dm)) == 3 and "relinquished" in text_of(w.posts(dm)[-1]).lower()
        updated = [
            c.args.get("ts")
            for c in w.fake.calls[mark:]
            if c.method == "chat.update" and c.args.get("channel") == dm
        ]
        # Each message was brought up to date, and not again on every attempt (a retry may
        # repeat the update its attempt made just before the heartbeat that records it).
        assert set(updated) == {m["ts"] for m in w.posts(dm)[:2]}, updated
        assert all(updated.count(ts) <= 2 for ts in updated), updated
