"""Only full members of rolecall's own workspace act from Slack; everyone else is told why.

The real Bolt app over signed HTTP, the real worker, Temporal and PostgreSQL, as in
test_slack_flow.py. Each refused person is an approver (or asks for a real role), so an app
that let them through would approve or start something: every case checks, through
Temporal, that nothing was started or signalled.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from rolecall import slack_blocks as kit
from rolecall.errors import NotFound
from rolecall.models import RequestState
from tests.conftest import Roles, eventually
from tests.fake_slack import (
    ALICE,
    APPROVERS_CHANNEL,
    ENTERPRISE,
    OTHER_ENTERPRISE,
    OTHER_TEAM,
    TEAM,
    SlackDriver,
    World,
    world_context,
)

MEMBERS = "rolecall is for full members of this workspace"
WHO = "UOUTSIDER"


@dataclass
class Case:
    """Someone who must not act: how the fake knows them and what they are told."""

    said: str  # in every answer they get
    email: str | None = "outsider@example.com"
    flags: dict[str, Any] = field(default_factory=dict)
    team: str = TEAM  # the payload's workspace
    enterprise: str | None = None  # the payload's Grid organisation
    grid: bool = False  # auth.test names ENTERPRISE for the bot token
    by_payload: bool = False  # refused before any users.info

    @property
    def short(self) -> str:
        return "Slack does not show your email" if self.email is None else self.said


CASES = {
    "wrong team": Case(
        f"this came from another Slack workspace ({OTHER_TEAM}): {MEMBERS}",
        team=OTHER_TEAM,
        by_payload=True,
    ),
    "wrong enterprise": Case(
        f"this came from another Slack organisation ({OTHER_ENTERPRISE}): {MEMBERS}",
        team=OTHER_TEAM,
        enterprise=OTHER_ENTERPRISE,
        grid=True,
        by_payload=True,
    ),
    "guest": Case(f"guests can't request or approve access: {MEMBERS}", flags={"guest": True}),
    "single-channel guest": Case(
        f"single-channel guests can't request or approve access: {MEMBERS}",
        flags={"single_channel_guest": True},
    ),
    "stranger": Case(
        f"people from other organisations (Slack Connect) can't request or approve access: {MEMBERS}",
        flags={"stranger": True, "team_id": OTHER_TEAM},
    ),
    "other team_id on the user": Case(
        f"members of other workspaces can't request or approve access: {MEMBERS}",
        flags={"team_id": OTHER_TEAM},
    ),
    "bot": Case(f"bots and apps can't request or approve access: {MEMBERS}", flags={"bot": True}),
    "app user": Case(f"bots and apps can't request or approve access: {MEMBERS}", flags={"app_user": True}),
    "deleted": Case(
        f"deactivated accounts can't request or approve access: {MEMBERS}", flags={"deleted": True}
    ),
    "no email": Case("Slack does not show yours to this app", email=None),
}


def request_form(w: World, role: str | None = None) -> dict[str, dict[str, Any]]:
    return {
        kit.B_INSTANCE: {kit.INSTANCE_SELECT: "pg"},
        kit.B_KIND: {"value": "role"},
        kit.B_ROLE: {"value": role or w.role},
        kit.B_DURATION: {"value": "1h"},
        kit.B_REASON: {"value": "let me in"},
    }


def request_view(w: World) -> dict[str, Any]:
    """The request modal as the app would have opened it, with an ID like Slack's."""
    from rolecall.config import ConfigStore

    inst = ConfigStore(w.stack.config_path).get().instance("pg")
    return {**kit.request_modal([inst], inst, [w.role]), "id": "VREQUEST", "hash": "h1"}


def suggestion(driver: SlackDriver, user: str) -> dict[str, Any]:
    payload = driver._base("block_suggestion", user)
    payload.update(action_id=kit.INSTANCE_SELECT, block_id=kit.B_INSTANCE, value="pg")
    payload["view"] = {"id": "VREQUEST", "type": "modal", "callback_id": kit.REQUEST_MODAL}
    return payload


def reaches(count: Callable[[], int], n: int) -> Callable[[], bool]:
    return lambda: count() == n


async def pending_request(w: World) -> tuple[str, dict[str, Any]]:
    rid = await w.stack.request(w.login, w.role, "1h", "deploy hotfix")
    await eventually(lambda: len(w.posts(APPROVERS_CHANNEL)) == 1, 15, "the approvers' message")
    return rid, w.posts(APPROVERS_CHANNEL)[0]


@pytest.mark.parametrize("name", list(CASES))
async def test_outsiders_are_told_and_nothing_happens(
    make_stack, roles: Roles, pg, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    case = CASES[name]
    caplog.set_level(logging.INFO, logger="rolecall.slack_identity")
    approvers = ["dba@example.com", *([case.email] if case.email else [])]
    async with world_context(make_stack, roles, approvers=approvers) as w:
        if case.grid:
            w.fake.set_workspace(TEAM, ENTERPRISE)
        w.fake.add_user(WHO, case.email, "Outsider", **case.flags)
        them = SlackDriver(w.slack.url, w.fake, team=case.team, enterprise=case.enterprise)
        rid, msg = await pending_request(w)

        # The slash command: a bare ack, then the reason by response_url; no modal opens.
        for answers, sub in enumerate(("request", "list"), start=1):
            r = await them.command(WHO, sub)
            assert r.status == 200 and r.text == "", r
            await eventually(reaches(lambda: len(w.fake.responses), answers), 10, f"the answer to /p0 {sub}")
            answer = w.fake.responses[-1][1]
            assert case.said in answer["text"] and answer["response_type"] == "ephemeral", answer
        assert not w.fake.calls_to("views.open")

        # Approve and Deny on the approvers' message: told in the channel, nothing signalled.
        for action in (kit.APPROVE, kit.DENY):
            r = await them.click(WHO, action, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
            assert r.status == 200 and r.text == ""
            count = 1 if action == kit.APPROVE else 2
            await eventually(reaches(lambda: len(w.ephemerals(WHO)), count), 10, f"the answer to {action}")
            assert case.said in w.ephemerals(WHO)[-1]
        assert not w.fake.calls_to("views.open")  # no deny modal either

        # The request modal and the deny modal, submitted anyway (a replayed or hand-made payload).
        r = await them.submit(WHO, request_view(w), request_form(w))
        assert r.json()["response_action"] == "errors", r.text
        assert case.short in r.json()["errors"][kit.B_INSTANCE]
        status = await w.stack.status(rid)
        deny = {**kit.deny_modal(status), "id": "VDENY", "hash": "h2"}
        r = await them.submit(WHO, deny, {kit.B_DENY_REASON: {"value": "no"}})
        assert case.short in r.json()["errors"][kit.B_DENY_REASON]

        # Type-ahead gets nothing to choose; App Home shows only why.
        r = await them.interaction(suggestion(them, WHO))
        assert r.status == 200 and r.json() == {"options": []}
        r = await them.event({"type": "app_home_opened", "user": WHO, "tab": "home", "channel": "D1"})
        assert r.status == 200
        home = await w.view("views.publish")
        assert case.said in json.dumps(home) and "Waiting for your approval" not in json.dumps(home)

        # Through Temporal: the pending request is untouched and never signalled ...
        status = await w.stack.status(rid)
        assert status.state == RequestState.PENDING and status.decided_by is None
        assert status.refused == []
        assert not pg.is_member(w.login, w.role)
        # ... and no request of theirs was started.
        if case.email:
            with pytest.raises(NotFound):
                await w.stack.status(f"access/pg/{w.role}/{case.email}")
        # Nothing Slack would have refused was sent (every answer was valid Block Kit).
        assert not [c for c in w.fake.calls if not c.response.get("ok", True)]

        # One log line per refusal, with who and why; users.info asked at most once (cached).
        lines = [r.getMessage() for r in caplog.records if r.name == "rolecall.slack_identity"]
        refusals = [line for line in lines if WHO in line]
        assert len(refusals) == 8, refusals
        assert all(case.said in line or "Slack does not show" in line for line in refusals), refusals
        looked_up = [c for c in w.fake.calls_to("users.info") if c.args.get("user") == WHO]
        assert len(looked_up) == (0 if case.by_payload else 1), looked_up


async def test_enterprise_grid_members_of_any_workspace_of_the_org_act(make_stack, roles: Roles, pg) -> None:
    """An org-wide Grid payload: the requester's workspace and a sister workspace's approver."""
    sister = "USISTER"
    async with world_context(make_stack, roles, approvers=["sister@example.com"]) as w:
        w.fake.set_workspace(TEAM, ENTERPRISE)
        w.fake.add_user(ALICE, w.email, "Alice Example", enterprise_id=ENTERPRISE)
        w.fake.add_user(
            sister, "sister@example.com", "Sam Sister", team_id=OTHER_TEAM, enterprise_id=ENTERPRISE
        )
        alice = SlackDriver(w.slack.url, w.fake, team=TEAM, enterprise=ENTERPRISE)
        approver = SlackDriver(w.slack.url, w.fake, team=OTHER_TEAM, enterprise=ENTERPRISE)

        r = await alice.command(ALICE, "request")
        assert r.status == 200
        view = await w.view()
        r = await alice.submit(ALICE, view, request_form(w))
        assert r.status == 200 and not r.text, r.text
        status = await w.stack.wait_state(w.rid(), RequestState.PENDING)
        assert status.slack_user_id == ALICE and status.requester == w.email

        await eventually(lambda: len(w.posts(APPROVERS_CHANNEL)) == 1, 15, "the approvers' message")
        msg = w.posts(APPROVERS_CHANNEL)[0]
        r = await approver.click(sister, kit.APPROVE, w.rid(), channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert r.status == 200
        status = await w.stack.wait_state(w.rid(), RequestState.GRANTED, timeout=20)
        assert status.decided_by == "sister@example.com" and pg.is_member(w.login, w.role)

        await alice.click(ALICE, kit.RELINQUISH, w.rid(), home=True)
        await w.stack.wait_state(w.rid(), RequestState.RELINQUISHED, timeout=20)
        assert not pg.is_member(w.login, w.role)
        assert not w.ephemerals(sister) and not w.ephemerals(ALICE)  # nobody was refused


async def test_configured_workspace_wins_over_auth_test(
    make_stack, roles: Roles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SLACK_TEAM_ID / SLACK_ENTERPRISE_ID set: the bot token's own workspace no longer counts."""
    monkeypatch.setenv("SLACK_TEAM_ID", "T0CONFIGURED")
    monkeypatch.setenv("SLACK_ENTERPRISE_ID", "E0CONFIGURED")
    async with world_context(make_stack, roles) as w:
        # auth.test still says TEAM, and ALICE is a full member of TEAM: refused all the same.
        r = await w.slack.command(ALICE, "request")
        assert r.status == 200 and r.text == ""
        await eventually(lambda: bool(w.fake.responses), 10, "the answer to /p0 request")
        assert f"another Slack workspace ({TEAM})" in w.fake.responses[-1][1]["text"]
        assert not w.fake.calls_to("views.open")
        # A member of the configured organisation acts.
        w.fake.add_user("UCONF", w.email, "Alice Configured", team_id="T0CONFIGURED")
        ours = SlackDriver(w.slack.url, w.fake, team="T0CONFIGURED", enterprise="E0CONFIGURED")
        r = await ours.command("UCONF", "request")
        assert r.status == 200
        view = await w.view()
        r = await ours.submit("UCONF", view, request_form(w))
        assert r.status == 200 and not r.text, r.text
        status = await w.stack.wait_state(w.rid(), RequestState.PENDING)
        assert status.slack_user_id == "UCONF"
        await w.stack.cli("cancel", w.rid(), "--as", w.email)
        await w.stack.wait_state(w.rid(), RequestState.CANCELLED)


async def test_approver_groups_keep_only_full_members(make_stack, roles: Roles) -> None:
    """The worker's group expansion uses the same identity: a guest in the group can't approve."""
    async with world_context(make_stack, roles, approver_groups=["SDBAS"]) as w:
        w.fake.add_user("UCAROL", "carol@example.com", "Carol")
        w.fake.add_user("UGUEST", "guest@example.com", "Guest", guest=True)
        w.fake.add_user("UBOTTY", "botty@example.com", "Botty", bot=True)
        w.fake.groups["SDBAS"] = ["UCAROL", "UGUEST", "UBOTTY"]
        rid = await w.stack.request(w.login, w.role)
        status = await w.stack.status(rid)
        assert status.approvers == ["carol@example.com", "dba@example.com"]
        await w.stack.cli("cancel", rid, "--as", w.email)
        await w.stack.wait_state(rid, RequestState.CANCELLED)


@pytest.mark.parametrize("var", ["SLACK_TEAM_ID", "SLACK_ENTERPRISE_ID"])
def test_a_malformed_workspace_id_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    from rolecall.config import load_settings
    from rolecall.errors import ConfigError

    monkeypatch.setenv(var, "rolecall workspace")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert str(e.value) == (
        f"{var}: 'rolecall workspace' is not a Slack team or enterprise ID (e.g. T0123ABCD, E0123ABCD)"
    )
    monkeypatch.setenv(var, "")  # compose passes unset variables as empty: the same as unset
    assert load_settings().slack_team_id is None and load_settings().slack_enterprise_id is None
