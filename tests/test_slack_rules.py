"""Rules from Slack: N of M approvals by clicks, a reason the rule refuses (inline, in the
modal), and break-glass: granted at once from the modal, then reviewed by an approver's click."""

from __future__ import annotations

from typing import Any

import pytest

from rolecall import slack_blocks as kit
from rolecall.errors import NotFound
from rolecall.models import RequestState
from tests.conftest import Roles, eventually
from tests.fake_slack import ALICE, APPROVERS_CHANNEL, BOB, DBA, World, action_ids, text_of, world_context

CAROL = "UCAROL"


async def wait_ephemeral(w: World, user: str, count: int) -> str:
    await eventually(lambda: len(w.ephemerals(user)) >= count, 10, f"ephemeral #{count} for {user}")
    return w.ephemerals(user)[count - 1]


def form(
    role: str, reason: str, duration: str = "30m", break_glass: bool = False
) -> dict[str, dict[str, Any]]:
    values: dict[str, dict[str, Any]] = {
        kit.B_INSTANCE: {kit.INSTANCE_SELECT: "pg"},
        kit.B_KIND: {"value": "role"},
        kit.B_ROLE: {"value": role},
        kit.B_DURATION: {"value": duration},
        kit.B_REASON: {"value": reason},
    }
    if break_glass:
        values[kit.B_BREAK_GLASS] = {"value": [kit.BREAK_GLASS_ON]}
    return values


async def not_started(w: World, role: str) -> None:
    with pytest.raises(NotFound):
        await w.stack.status(w.rid(role))


async def test_two_of_three_approvals_by_clicks(make_stack, roles: Roles, pg) -> None:
    rules = [{"name": "billing", "roles": [f"{roles.prefix}_*"], "approvals_required": 2}]
    approvers = ["dba@example.com", "bob@example.com", "carol@example.com"]
    async with world_context(make_stack, roles, approvers=approvers, rules=rules) as w:
        w.fake.add_user(CAROL, "carol@example.com", "Carol Approver")
        rid = await w.stack.request(w.login, w.role, "1h", "month-end close")
        await eventually(lambda: len(w.posts(APPROVERS_CHANNEL)) == 1, 15, "the approvers' message")
        msg = w.posts(APPROVERS_CHANNEL)[0]
        assert "0 of 2 approvals" in text_of(msg) and "billing" in text_of(msg)

        await w.slack.click(DBA, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        await eventually(
            lambda: "1 of 2 approvals" in text_of(w.posts(APPROVERS_CHANNEL)[0]), 15, "the card's progress"
        )
        status = await w.stack.status(rid)
        assert status.state == RequestState.PENDING and [a.by for a in status.approvals] == [
            "dba@example.com"
        ]
        assert status.approvals[0].via == "slack (verified)"
        assert action_ids(w.posts(APPROVERS_CHANNEL)[0]) == [kit.APPROVE, kit.DENY, kit.PRIVILEGES]
        assert not pg.is_member(w.login, w.role)

        # The same approver again: told, nothing counted twice.
        await w.slack.click(DBA, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert "you already approved (1 of 2)" in await wait_ephemeral(w, DBA, 1)
        status = await w.stack.status(rid)
        assert status.state == RequestState.PENDING and len(status.approvals) == 1

        # Another approver: the second approval grants.
        await w.slack.click(BOB, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        status = await w.stack.wait_state(rid, RequestState.GRANTED, timeout=20)
        assert [a.by for a in status.approvals] == ["dba@example.com", "bob@example.com"]
        assert status.decided_via == "slack (verified)"
        assert pg.is_member(w.login, w.role)
        await eventually(
            lambda: kit.APPROVE not in action_ids(w.posts(APPROVERS_CHANNEL)[0]), 15, "no buttons"
        )
        # The third approver is too late: told, nothing changes.
        await w.slack.click(CAROL, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert "already approved" in await wait_ephemeral(w, CAROL, 1)
        assert not w.ephemerals(BOB)


async def test_reason_refused_inline_and_break_glass_granted_then_reviewed(
    make_stack, roles: Roles, pg
) -> None:
    other = roles.role("other")
    rules = [
        {
            "name": "incident",
            "roles": [roles.name("ro")],
            "reason_pattern": r"INC-\d+",
            "break_glass": True,
            "break_glass_max": "30m",
        },
        {"name": "plain", "roles": [other]},
    ]
    async with world_context(
        make_stack, roles, approvers=["dba@example.com", "bob@example.com"], rules=rules, more_roles=[other]
    ) as w:
        await w.slack.command(ALICE, "request")
        view = await w.view()
        assert [b["block_id"] for b in view["blocks"] if b.get("block_id") == kit.B_BREAK_GLASS]

        # No reason, then one that does not match: inline under the Reason field, with the pattern.
        r = await w.slack.submit(ALICE, view, form(w.role, ""))
        assert r.json()["response_action"] == "errors"
        assert r.json()["errors"] == {kit.B_REASON: r"rule 'incident' needs a reason matching INC-\d+"}
        r = await w.slack.submit(ALICE, view, form(w.role, "db is slow"))
        assert r.json()["errors"] == {
            kit.B_REASON: r"reason 'db is slow' does not match what rule 'incident' expects: INC-\d+"
        }
        # Break-glass on a role whose rule does not allow it: inline, naming the rule.
        r = await w.slack.submit(ALICE, view, form(other, "INC-7 outage", break_glass=True))
        assert r.json()["errors"] == {
            kit.B_BREAK_GLASS: "rule 'plain' does not allow break-glass (emergency) access"
        }
        await not_started(w, w.role)
        await not_started(w, other)

        # Break-glass where the rule allows it: granted at once, no approval.
        r = await w.slack.submit(ALICE, view, form(w.role, "INC-7 outage", break_glass=True))
        assert r.status == 200 and not r.text, r.text
        status = await w.stack.wait_state(w.rid(), RequestState.GRANTED, timeout=20)
        assert status.break_glass and status.rule == "incident" and status.reviewed_by is None
        assert pg.is_member(w.login, w.role)
        await eventually(
            lambda: kit.REVIEW in action_ids(w.posts(APPROVERS_CHANNEL)[0]), 15, "the break-glass alert"
        )
        msg = w.posts(APPROVERS_CHANNEL)[0]
        assert "BREAK-GLASS" in text_of(msg) and kit.APPROVE not in action_ids(msg)

        # The requester cannot review their own; an approver's click reviews it.
        await w.slack.click(ALICE, kit.REVIEW, w.rid(), channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert "you can't review your own break-glass access" in await wait_ephemeral(w, ALICE, 1)
        assert (await w.stack.status(w.rid())).reviewed_by is None
        await w.slack.click(DBA, kit.REVIEW, w.rid(), channel=APPROVERS_CHANNEL, ts=msg["ts"])

        async def reviewed() -> bool:
            return (await w.stack.status(w.rid())).reviewed_by == "dba@example.com"

        await eventually(reviewed, 15, "the review")
        await eventually(
            lambda: "Reviewed by dba@example.com" in text_of(w.posts(APPROVERS_CHANNEL)[0]), 15, "card update"
        )
        assert kit.REVIEW not in action_ids(w.posts(APPROVERS_CHANNEL)[0])
        assert not w.ephemerals(DBA)
        # A second review: told who reviewed, nothing changes.
        await w.slack.click(BOB, kit.REVIEW, w.rid(), channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert "already reviewed by dba@example.com" in await wait_ephemeral(w, BOB, 1)
        assert (await w.stack.status(w.rid())).reviewed_by == "dba@example.com"
