"""End to end through Slack: command -> modal -> submission -> approve -> grant -> relinquish.

The real Bolt app over HTTP (signed like Slack), the real worker with the Slack notifier,
the Temporal dev server and PostgreSQL; Slack itself is the local fake in fake_slack.py.
"""

from __future__ import annotations

import json
from typing import Any

from rolecall import slack_blocks as kit
from rolecall.models import RequestState
from tests.conftest import Roles, eventually
from tests.fake_slack import ALICE, APPROVERS_CHANNEL, DBA, World, action_ids, text_of, world_context


async def open_and_submit(w: World, duration: str = "1h", reason: str = "INC-42 <check> & fix") -> str:
    r = await w.slack.command(ALICE, "request")
    assert r.status == 200, r.text
    view = await w.view()
    assert view["callback_id"] == kit.REQUEST_MODAL
    r = await w.slack.submit(
        ALICE,
        view,
        {
            kit.B_INSTANCE: {kit.INSTANCE_SELECT: "pg"},
            kit.B_KIND: {"value": "role"},
            kit.B_ROLE: {"value": w.role},
            kit.B_DURATION: {"value": duration},
            kit.B_REASON: {"value": reason},
        },
    )
    assert r.status == 200, r.text
    assert not r.text, f"the modal should close, got {r.text}"  # empty ack closes it
    return w.rid()


def approval_message(w: World) -> dict[str, Any]:
    posts = w.posts(APPROVERS_CHANNEL)
    assert len(posts) == 1, posts
    return posts[0]


async def test_request_approve_grant_relinquish(make_stack, roles: Roles, pg) -> None:
    async with world_context(make_stack, roles, more_roles=["rc_never_created_*"]) as w:
        r = await w.slack.command(ALICE, "request")
        assert r.status == 200
        view = await w.view()
        roles_offered = [o["value"] for o in _element(view, kit.B_ROLE)["options"]]
        # Only requestable roles that exist in the database are offered.
        assert roles_offered == [w.role]
        assert [o["value"] for o in _element(view, kit.B_INSTANCE)["options"]] == ["pg"]
        durations = [o["value"] for o in _element(view, kit.B_DURATION)["options"]]
        assert durations[-1] == "8h" and "12h" not in durations

        rid = await open_and_submit(w)
        status = await w.stack.wait_state(rid, RequestState.PENDING)
        assert status.source == "slack" and status.slack_user_id == ALICE
        assert status.requester == w.email and status.requester_name == "Alice Example"
        assert status.reason == "INC-42 <check> & fix"

        # The approvers' channel gets Approve / Deny; the requester a DM with Cancel.
        await eventually(lambda: len(w.posts(APPROVERS_CHANNEL)) == 1, 15, "the approvers' message")
        msg = approval_message(w)
        assert action_ids(msg) == [kit.APPROVE, kit.DENY, kit.PRIVILEGES]
        body = text_of(msg)
        assert w.role in body and "pg" in body and "1h" in body and "INC-42 &lt;check&gt; &amp; fix" in body
        assert f"<@{ALICE}>" in body
        dm = f"D{ALICE}"
        await eventually(lambda: len(w.posts(dm)) == 1, 15, "the requester's DM")
        assert action_ids(w.posts(dm)[0]) == [kit.CANCEL]
        assert "waiting for approval" in text_of(w.posts(dm)[0])
        # Buttons carry only the request ID.
        for block in msg["blocks"]:
            for el in block.get("elements") or []:
                if el.get("type") == "button":
                    assert el["value"] == rid

        r = await w.slack.click(DBA, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert r.status == 200
        status = await w.stack.wait_state(rid, RequestState.GRANTED, timeout=20)
        assert pg.is_member(w.login, w.role)
        assert status.decided_by == "dba@example.com"

        # The same approvers' message, updated in place: who decided, no buttons.
        await eventually(lambda: "Granted until" in text_of(approval_message(w)), 15, "approval msg update")
        msg = approval_message(w)
        assert action_ids(msg) == []
        assert "Approved by dba@example.com" in text_of(msg)
        # The grant DM: role, instance, login, expiry in the reader's time zone, Relinquish.
        await eventually(lambda: len(w.posts(dm)) == 2, 15, "the grant DM")
        grant = w.posts(dm)[1]
        assert action_ids(grant) == [kit.RELINQUISH, kit.EXTEND]  # day two: Extend sits beside it
        assert status.expires_at is not None
        assert f"<!date^{int(status.expires_at.timestamp())}^" in text_of(grant)
        assert f"`{w.login}`" in text_of(grant)
        button = grant["blocks"][-2]["elements"][0]
        assert button["confirm"]["confirm"]["text"] == "Relinquish"
        # The confirmation DM lost its Cancel button.
        assert action_ids(w.posts(dm)[0]) == []

        r = await w.slack.click(ALICE, kit.RELINQUISH, rid, channel=dm, ts=grant["ts"])
        assert r.status == 200
        status = await w.stack.wait_state(rid, RequestState.RELINQUISHED, timeout=20)
        assert not pg.is_member(w.login, w.role)

        await eventually(lambda: len(w.posts(dm)) == 3, 15, "the relinquished DM")
        assert action_ids(w.posts(dm)[1]) == []
        assert "relinquished" in text_of(w.posts(dm)[1])
        assert "You relinquished your access" in text_of(w.posts(dm)[2])
        assert "relinquished and revoked" in text_of(approval_message(w))
        # Nothing Slack refused along the way.
        assert not [c for c in w.fake.calls if not c.response.get("ok", True)]


async def test_instance_change_reloads_roles_and_help_and_list(make_stack, roles: Roles) -> None:
    async with world_context(make_stack, roles) as w:
        await w.slack.command(ALICE, "request")
        view = await w.view()
        r = await w.slack.select_in_view(ALICE, view, kit.B_INSTANCE, kit.INSTANCE_SELECT, "pg")
        assert r.status == 200
        updated = await w.view("views.update")
        assert updated["id"] == view["id"]
        assert [o["value"] for o in _element(updated, kit.B_ROLE)["options"]] == [w.role]

        r = await w.slack.command(ALICE, "help")
        assert r.status == 200 and "/p0 request" in r.text and "ephemeral" in r.text
        r = await w.slack.command(ALICE, "frobnicate")
        assert "Unknown command" in r.text

        r = await w.slack.command(ALICE, "list")
        assert r.status == 200
        await eventually(lambda: len(w.fake.responses) == 1, 10, "the list answer")
        assert "no pending or active requests" in str(w.fake.responses[0][1])

        rid = await w.stack.request(w.login, w.role)
        await w.slack.command(ALICE, "list")

        def listed() -> bool:
            return len(w.fake.responses) >= 2 and w.role in json.dumps(w.fake.responses[-1][1])

        await eventually(listed, 15, "the request in /p0 list")
        assert w.fake.responses[-1][1]["response_type"] == "ephemeral"
        # Requests started outside Slack still reach the requester (found by email).
        await eventually(lambda: len(w.posts(f"D{ALICE}")) == 1, 15, "the DM to a CLI requester")
        assert w.fake.calls_to("users.lookupByEmail", ok=True)
        await w.stack.cli("cancel", rid, "--as", w.email)
        await w.stack.wait_state(rid, RequestState.CANCELLED)
        await eventually(lambda: "Cancelled" in text_of(approval_message(w)), 15, "cancelled message")
        assert action_ids(approval_message(w)) == []


def _element(view: dict[str, Any], block_id: str) -> dict[str, Any]:
    for block in view["blocks"]:
        if block.get("block_id") == block_id:
            return dict(block["element"])
    raise AssertionError(f"no block {block_id!r} in {view}")


async def test_pagerduty_auto_approval_says_so(make_stack, roles: Roles, pg) -> None:
    from tests.fake_pagerduty import FakePagerDuty

    with FakePagerDuty() as pd:
        async with world_context(make_stack, roles, sections=pd.section()) as w:
            user = pd.add_user(w.email, "Alice")
            pd.add_oncall(user, ("PEPDB01", "Databases"), level=1, schedule=("PSCDB01", "DB primary"))
            rid = await open_and_submit(w, duration="30m")
            status = await w.stack.wait_state(rid, RequestState.GRANTED, timeout=20)
            assert status.auto_approved and pg.is_member(w.login, w.role)

            await eventually(lambda: len(w.posts(APPROVERS_CHANNEL)) == 1, 15, "the approvers' message")
            await eventually(lambda: "Granted until" in text_of(approval_message(w)), 15, "grant shown")
            msg = approval_message(w)
            assert action_ids(msg) == [] and "Auto-approved" in text_of(msg) and "on call" in text_of(msg)
            dm = f"D{ALICE}"
            await eventually(lambda: len(w.posts(dm)) == 2, 15, "the confirmation and grant DMs")
            confirm, grant = w.posts(dm)
            assert "auto-approved" in text_of(confirm) and action_ids(confirm) == []
            assert f"Auto-approved: {status.on_call_detail}" in text_of(grant)
            assert "is on call" in status.on_call_detail
            assert action_ids(grant) == [kit.RELINQUISH, kit.EXTEND]  # day two: Extend sits beside it
