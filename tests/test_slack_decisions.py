"""Who may click what: non-approvers, self-approval, double clicks, deny with a reason, App Home."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from rolecall import slack_blocks as kit
from rolecall.models import RequestState
from tests.conftest import Roles, eventually
from tests.fake_slack import ALICE, APPROVERS_CHANNEL, BOB, DBA, World, action_ids, text_of, world_context


async def pending_request(w: World) -> tuple[str, dict[str, Any]]:
    rid = await w.stack.request(w.login, w.role, "1h", "deploy hotfix")
    await eventually(lambda: len(w.posts(APPROVERS_CHANNEL)) == 1, 15, "the approvers' message")
    return rid, w.posts(APPROVERS_CHANNEL)[0]


async def wait_ephemeral(w: World, user: str, count: int) -> str:
    await eventually(lambda: len(w.ephemerals(user)) >= count, 10, f"ephemeral #{count} for {user}")
    return w.ephemerals(user)[count - 1]


async def test_non_approver_and_self_approval_change_nothing(make_stack, roles: Roles, pg) -> None:
    async with world_context(make_stack, roles) as w:
        rid, msg = await pending_request(w)
        r = await w.slack.click(BOB, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert r.status == 200
        text = await wait_ephemeral(w, BOB, 1)
        assert "bob@example.com is not an approver" in text
        r = await w.slack.click(BOB, kit.DENY, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert "not an approver" in await wait_ephemeral(w, BOB, 2)
        assert not w.fake.calls_to("views.open")  # no deny modal for a non-approver
        r = await w.slack.click(BOB, kit.CANCEL, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert "only the requester can cancel" in await wait_ephemeral(w, BOB, 3)
        status = await w.stack.status(rid)
        assert status.state == RequestState.PENDING and status.decided_by is None
        assert status.refused == []  # refused by the handler, so no signal was even sent
        assert action_ids(w.posts(APPROVERS_CHANNEL)[0]) == [kit.APPROVE, kit.DENY, kit.PRIVILEGES]
        assert not pg.is_member(w.login, w.role)


async def test_self_approval_refused(make_stack, roles: Roles, pg) -> None:
    async with world_context(make_stack, roles, requester_approves=True) as w:
        rid, msg = await pending_request(w)
        await w.slack.click(ALICE, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert "you can't approve your own request" in await wait_ephemeral(w, ALICE, 1)
        status = await w.stack.status(rid)
        assert status.state == RequestState.PENDING and status.decided_by is None
        assert not pg.is_member(w.login, w.role)
        # The requester may still cancel it, from the DM's button.
        dm = f"D{ALICE}"
        await eventually(lambda: len(w.posts(dm)) == 1, 15, "the requester's DM")
        await w.slack.click(ALICE, kit.CANCEL, rid, channel=dm, ts=w.posts(dm)[0]["ts"])
        await w.stack.wait_state(rid, RequestState.CANCELLED)
        await eventually(lambda: action_ids(w.posts(dm)[0]) == [], 15, "the DM's Cancel button to go")
        await eventually(lambda: "Cancelled" in text_of(w.posts(APPROVERS_CHANNEL)[0]), 15, "msg update")


async def test_double_click_says_who_decided(make_stack, roles: Roles, pg) -> None:
    async with world_context(make_stack, roles, approvers=["dba@example.com", "bob@example.com"]) as w:
        rid, msg = await pending_request(w)
        await w.slack.click(DBA, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        await w.stack.wait_state(rid, RequestState.GRANTED, timeout=20)
        # A second click, by the same approver or another: told who decided, nothing changes.
        await w.slack.click(DBA, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert "already approved by dba@example.com" in await wait_ephemeral(w, DBA, 1)
        await w.slack.click(BOB, kit.DENY, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert "already approved by dba@example.com" in await wait_ephemeral(w, BOB, 1)
        status = await w.stack.status(rid)
        assert status.state == RequestState.GRANTED and status.decided_by == "dba@example.com"
        # The click was signed by the Slack app and verified by the worker.
        assert status.decided_via == "slack (verified)"
        assert pg.is_member(w.login, w.role)


async def test_signed_clicks_count_where_only_verified_decisions_do(make_stack, roles: Roles, pg) -> None:
    async with world_context(make_stack, roles, accept_unverified_decisions=False) as w:
        rid, msg = await pending_request(w)
        # The CLI's decision does not count here; the Slack click, signed, does.
        r = await w.stack.cli("approve", rid, "--as", "dba@example.com")
        assert r.code != 0 and "accepts only decisions made in Slack and verified" in r.err + r.out
        await w.slack.click(DBA, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        status = await w.stack.wait_state(rid, RequestState.GRANTED, timeout=20)
        assert status.decided_by == "dba@example.com" and status.decided_via == "slack (verified)"
        assert pg.is_member(w.login, w.role)


async def test_unsigned_slack_app_is_refused_where_only_verified_decisions_count(
    make_stack, roles: Roles, pg, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rolecall.slack_app")
    async with world_context(make_stack, roles, signed=False, accept_unverified_decisions=False) as w:
        # One warning at start-up, naming the variable.
        warned = [r for r in caplog.records if "ROLECALL_DECISION_KEY is not set" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        rid, msg = await pending_request(w)
        await w.slack.click(DBA, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        text = await wait_ephemeral(w, DBA, 1)
        assert "accepts only decisions made in Slack and verified by rolecall; this one is unverified" in text
        await w.slack.click(DBA, kit.DENY, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert "this one is unverified" in await wait_ephemeral(w, DBA, 2)
        assert not w.fake.calls_to("views.open")  # no deny modal either
        status = await w.stack.status(rid)
        assert status.state == RequestState.PENDING and status.decided_by is None
        assert status.refused == [] and status.approvals == []  # refused before any signal
        assert action_ids(w.posts(APPROVERS_CHANNEL)[0]) == [kit.APPROVE, kit.DENY, kit.PRIVILEGES]
        assert not pg.is_member(w.login, w.role)


async def test_simultaneous_clicks_one_decision(make_stack, roles: Roles, pg) -> None:
    """Two approvers click at once: one decision wins, the other is told, never both."""
    import asyncio

    async with world_context(make_stack, roles, approvers=["dba@example.com", "bob@example.com"]) as w:
        rid, msg = await pending_request(w)
        await asyncio.gather(
            w.slack.click(DBA, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"]),
            w.slack.click(BOB, kit.CANCEL, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"]),
            w.slack.click(BOB, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"]),
        )
        status = await w.stack.wait_state(rid, RequestState.GRANTED, timeout=20)
        assert status.decided_by in ("dba@example.com", "bob@example.com")
        loser = BOB if status.decided_by == "dba@example.com" else DBA
        await eventually(lambda: any("already approved" in e for e in w.ephemerals(loser)), 10, "loser told")


async def test_deny_with_reason(make_stack, roles: Roles, pg) -> None:
    async with world_context(make_stack, roles) as w:
        rid, msg = await pending_request(w)
        r = await w.slack.click(DBA, kit.DENY, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert r.status == 200
        view = await w.view()
        assert view["callback_id"] == kit.DENY_MODAL and view["private_metadata"] == rid
        r = await w.slack.submit(DBA, view, {kit.B_DENY_REASON: {"value": "use the read replica"}})
        assert r.status == 200 and not r.text
        status = await w.stack.wait_state(rid, RequestState.DENIED)
        assert status.decided_by == "dba@example.com" and status.decision_reason == "use the read replica"
        assert status.decided_via == "slack (verified)"
        assert not pg.is_member(w.login, w.role)
        await eventually(lambda: "Denied by" in text_of(w.posts(APPROVERS_CHANNEL)[0]), 15, "msg update")
        msg = w.posts(APPROVERS_CHANNEL)[0]
        assert action_ids(msg) == [] and "use the read replica" in text_of(msg)
        dm = f"D{ALICE}"
        await eventually(lambda: len(w.posts(dm)) == 2, 15, "the denial DM")
        assert "denied by dba@example.com (use the read replica)" in text_of(w.posts(dm)[1])
        # Submitting the deny modal again (a replay) answers in the modal, changes nothing.
        r = await w.slack.submit(DBA, view, {kit.B_DENY_REASON: {"value": "again"}})
        assert r.json()["response_action"] == "errors"
        assert "already denied by dba@example.com" in r.json()["errors"][kit.B_DENY_REASON]
        assert (await w.stack.status(rid)).decision_reason == "use the read replica"


async def test_app_home(make_stack, roles: Roles, pg) -> None:
    async with world_context(make_stack, roles) as w:
        rid, _ = await pending_request(w)

        async def home(user: str, needle: str) -> dict[str, Any]:
            found: dict[str, Any] = {}

            async def published() -> bool:
                n = len(w.fake.calls_to("views.publish", ok=True))
                r = await w.slack.event(
                    {"type": "app_home_opened", "user": user, "tab": "home", "channel": "D1"}
                )
                assert r.status == 200
                view = await w.view("views.publish", n + 1)
                found.update(view)
                return needle in json.dumps(view)

            await eventually(published, 15, f"{needle!r} on {user}'s home")
            return found

        view = await home(DBA, "Waiting for your approval")
        assert [b for b in view["blocks"] if kit.APPROVE in json.dumps(b) and rid in json.dumps(b)]
        view = await home(ALICE, "Your pending requests")
        assert rid in json.dumps(view) and "Waiting for your approval" not in json.dumps(view)
        # Approve from the App Home; the home is republished.
        await w.slack.click(DBA, kit.APPROVE, rid, home=True)
        await w.stack.wait_state(rid, RequestState.GRANTED, timeout=20)
        view = await home(ALICE, kit.RELINQUISH)
        await w.slack.click(ALICE, kit.RELINQUISH, rid, home=True)
        await w.stack.wait_state(rid, RequestState.RELINQUISHED, timeout=20)
        assert not pg.is_member(w.login, w.role)
