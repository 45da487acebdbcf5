"""The Slack app at organisation scale: 300 roles behind a type-ahead, stale choices refused
inline, and an approver's App Home over 300 pending requests read from the visibility store
with no status query."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    QueryWorkflowInput,
    WorkflowHandle,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from rolecall import contract, operations
from rolecall import slack_blocks as kit
from rolecall.errors import NotFound
from rolecall.models import AccessRequest, RequestState
from rolecall.temporal import APPROVERS, DATA_CONVERTER, INSTANCE, REQUESTER, ROLE, STATE
from tests.conftest import Roles, eventually
from tests.fake_slack import ALICE, World, world_context


class CountQueries(Interceptor):
    """Counts the workflow queries a client sends (the Slack app's, in these tests)."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        counter = self

        class Counting(OutboundInterceptor):
            async def query_workflow(self, input: QueryWorkflowInput) -> Any:
                counter.queries.append(input.query)
                return await super().query_workflow(input)

        return Counting(next)


def role_form(instance: str, role: str, action: str = "value") -> dict[str, dict[str, Any]]:
    return {
        kit.B_INSTANCE: {kit.INSTANCE_SELECT: instance},
        kit.B_KIND: {"value": "role"},
        kit.B_ROLE: {action: role},
        kit.B_DURATION: {"value": "1h"},
        kit.B_REASON: {"value": "month-end"},
    }


def element(view: dict[str, Any], block_id: str) -> dict[str, Any]:
    return next(dict(b["element"]) for b in view["blocks"] if b.get("block_id") == block_id)


async def test_300_roles_are_found_by_typing(make_stack, roles: Roles, pg) -> None:
    names = [roles.name(f"r{i:03d}") for i in range(300)]
    pg.execute(sql.SQL("; ").join(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(n)) for n in names))
    roles.created.extend(names)
    async with world_context(make_stack, roles, more_roles=[f"{roles.prefix}_r*"]) as w:
        await w.slack.command(ALICE, "request")
        view = {**await w.view(), "id": "VREQUEST"}
        picker = element(view, kit.B_ROLE)
        assert picker["type"] == "external_select" and picker["action_id"] == kit.ROLE_SELECT
        assert "options" not in picker

        r = await w.slack.suggest(ALICE, view, kit.B_ROLE, kit.ROLE_SELECT, "R250")
        assert r.status == 200
        assert [o["value"] for o in r.json()["options"]] == [names[250]]
        # A short query matches more than Slack shows: at most 100, each containing it.
        r = await w.slack.suggest(ALICE, view, kit.B_ROLE, kit.ROLE_SELECT, "_r")
        offered = [o["value"] for o in r.json()["options"]]
        assert len(offered) == 100 and all("_r" in o for o in offered)
        r = await w.slack.suggest(ALICE, view, kit.B_ROLE, kit.ROLE_SELECT, "no-such-role")
        assert r.json()["options"] == []

        r = await w.slack.submit(ALICE, view, role_form("pg", names[250], kit.ROLE_SELECT))
        assert r.status == 200 and not r.text, r.text
        status = await w.stack.wait_state(w.rid(names[250]), RequestState.PENDING)
        assert status.role == names[250] and status.source == "slack"


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


async def test_stale_choices_are_refused_inline_and_start_nothing(make_stack, roles: Roles) -> None:
    other = roles.role("other")
    async with world_context(make_stack, roles, more_roles=[other]) as w:
        await w.slack.command(ALICE, "request")
        view = await w.view()
        text = read(w.stack.config_path)
        # The role is taken out of the policy while the modal is open.
        write(w.stack.config_path, text.replace(f'"{w.role}", ', ""))
        r = await w.slack.submit(ALICE, view, role_form("pg", w.role))
        assert r.json() == {
            "response_action": "errors",
            "errors": {kit.B_ROLE: f"{w.role} is no longer requestable on pg."},
        }
        # The instance is renamed while the modal is open.
        write(w.stack.config_path, text.replace("[instances.pg]", "[instances.pg_main]"))
        r = await w.slack.submit(ALICE, view, role_form("pg", other))
        assert r.json() == {
            "response_action": "errors",
            "errors": {kit.B_INSTANCE: "Instance 'pg' is not configured (any more): choose another."},
        }
        for role in (w.role, other):
            with pytest.raises(NotFound):
                await w.stack.status(w.rid(role))


async def start_pending(client: Client, role: str, approver: str, n: int) -> list[WorkflowHandle[Any, Any]]:
    """`n` pending requests as the visibility store shows them, on a queue no worker polls."""
    queue = f"nobody-{uuid.uuid4().hex}"

    async def one(i: int) -> WorkflowHandle[Any, Any]:
        requester = f"user{i:03d}-{queue[-6:]}@example.com"
        req = AccessRequest(
            requester=requester, instance="pg", role=role, duration=3600, reason=f"r{i}", source="cli"
        )
        return await client.start_workflow(
            contract.ACCESS_REQUEST,
            req,
            id=contract.request_id("pg", role, requester),
            task_queue=queue,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(REQUESTER, requester),
                    SearchAttributePair(INSTANCE, "pg"),
                    SearchAttributePair(ROLE, role),
                    SearchAttributePair(STATE, RequestState.PENDING.value),
                    SearchAttributePair(APPROVERS, [approver]),
                ]
            ),
        )

    handles: list[WorkflowHandle[Any, Any]] = []
    for start in range(0, n, 50):
        handles += await asyncio.gather(*(one(i) for i in range(start, min(n, start + 50))))
    return handles


async def test_app_home_of_an_approver_of_300_pending_requests(
    make_stack, roles: Roles, temporal_address: str
) -> None:
    approver = f"{roles.prefix}-approver@example.com"
    counter = CountQueries()
    slack_temporal = await Client.connect(
        temporal_address, data_converter=DATA_CONVERTER, interceptors=[counter]
    )
    async with world_context(make_stack, roles, approvers=[approver], slack_temporal=slack_temporal) as w:
        w.fake.add_user("UAPPROVER", approver, "Ada Approver")
        handles = await start_pending(w.stack.client, w.role, approver, 300)
        try:
            mine = await w.stack.request(w.login, w.role)  # a real one, through the worker
            query = f'{APPROVERS.name} = "{approver}" AND {STATE.name} = "pending"'

            async def all_visible() -> bool:
                return (await w.stack.client.count_workflows(query)).count == 301

            await eventually(all_visible, 60, "301 pending requests in the visibility store")
            # The counter counts: a status query through this client is seen.
            await operations.get_status(slack_temporal, mine)
            assert counter.queries == [contract.STATUS]
            counter.queries.clear()

            await home_pages(w, mine)
            assert counter.queries == []  # no status query for any of the 301
        finally:
            await asyncio.gather(*(h.terminate(reason="test over") for h in handles))


def buttons(view: dict[str, Any], action_id: str) -> list[dict[str, Any]]:
    return [
        el
        for b in view["blocks"]
        if b["type"] == "actions"
        for el in b["elements"]
        if el.get("action_id") == action_id
    ]


async def home_pages(w: World, mine: str) -> None:
    r = await w.slack.event({"type": "app_home_opened", "user": "UAPPROVER", "tab": "home", "channel": "D1"})
    assert r.status == 200
    home = await w.view("views.publish", 1)
    text = json.dumps(home)
    assert "Waiting for your approval (301)" in text and "1 to 25 of 301" in text
    first = [b["value"] for b in buttons(home, kit.APPROVE)]
    assert len(first) == 25 and mine in first  # the newest first
    [more] = buttons(home, kit.HOME_MORE)
    await w.slack.click("UAPPROVER", kit.HOME_MORE, more["value"], home=True)
    second = await w.view("views.publish", 2)
    assert "26 to 50 of 301" in json.dumps(second)
    page2 = [b["value"] for b in buttons(second, kit.APPROVE)]
    assert len(page2) == 25 and not set(page2) & set(first)
