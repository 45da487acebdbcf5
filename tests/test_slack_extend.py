"""Day two through Slack: Extend on the grant DM opens a modal; the approvers' thread approves."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from rolecall import slack_blocks as kit
from rolecall.models import RequestState
from tests.conftest import Roles, eventually
from tests.fake_slack import ALICE, APPROVERS_CHANNEL, BOB, DBA, World, action_ids, world_context


def _with(w: World, channel: str, action: str) -> list[dict[str, Any]]:
    return [m for m in w.fake.channel_messages(channel) if action in action_ids(m)]


async def test_extend_from_the_grant_dm_approved_in_the_thread(make_stack, roles: Roles, pg) -> None:
    async with world_context(make_stack, roles) as w:
        rid = await w.stack.request(w.login, w.role, "1h")
        await w.stack.cli("approve", rid, "--as", "dba@example.com")
        granted = await w.stack.wait_state(rid, RequestState.GRANTED)
        dm = f"D{ALICE}"
        await eventually(lambda: bool(_with(w, dm, kit.EXTEND)), 15, "the grant DM with Extend")
        [grant] = _with(w, dm, kit.EXTEND)

        r = await w.slack.click(BOB, kit.EXTEND, rid, channel=dm, ts=grant["ts"])
        assert r.status == 200
        await eventually(
            lambda: any("only the requester" in e for e in w.ephemerals(BOB)), 10, "the refusal for another"
        )

        r = await w.slack.click(ALICE, kit.EXTEND, rid, channel=dm, ts=grant["ts"])
        assert r.status == 200
        view = await w.view()
        assert view["callback_id"] == kit.EXTEND_MODAL
        r = await w.slack.submit(
            ALICE, view, {kit.B_EXTEND_BY: {"value": "30m"}, kit.B_EXTEND_REASON: {"value": "one more query"}}
        )
        assert r.status == 200 and not r.text, r.text
        status = await w.stack.status(rid)
        assert [e.state for e in status.extensions] == ["pending"]
        assert status.extensions[0].via == "slack (verified)"

        await eventually(
            lambda: bool(_with(w, APPROVERS_CHANNEL, kit.APPROVE_EXTENSION)), 15, "the ask in the thread"
        )
        [ask] = _with(w, APPROVERS_CHANNEL, kit.APPROVE_EXTENSION)
        posted = [
            c for c in w.fake.calls_to("chat.postMessage") if "asks for 30m more" in str(c.args.get("text"))
        ]
        assert posted and posted[0].args.get("thread_ts"), "posted in the approvers' thread"
        r = await w.slack.click(DBA, kit.APPROVE_EXTENSION, rid, channel=APPROVERS_CHANNEL, ts=ask["ts"])
        assert r.status == 200
        await eventually(lambda: _approved(w, rid), 15, "the approved extension")
        status = await w.stack.status(rid)
        assert granted.expires_at is not None
        assert status.expires_at == granted.expires_at + timedelta(minutes=30)
        assert pg.is_member(w.login, w.role)


async def _approved(w: World, rid: str) -> bool:
    s = await w.stack.status(rid)
    return bool(s.extensions) and s.extensions[0].state == "approved"
