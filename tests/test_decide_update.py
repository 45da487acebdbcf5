"""Decisions as one round trip (the decide update), and the signal path a rolling deploy needs.

The update's validator refuses what the callers' pre-check used to refuse: one clear line and
no trace in the history. An accepted decision is answered with its outcome, read in the task
that settled it. A worker of the release before does not know the update; the client then
falls back to the pre-check and the signal, and the answer is the same.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from rolecall import contract, operations
from rolecall.errors import NotAllowed, RolecallError
from rolecall.models import Decision, RequestState, RequestStatus
from rolecall.temporal import DATA_CONVERTER
from tests.conftest import Roles, eventually

_TASK_IN_FLIGHT = (EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED)


async def _event_types(client: Client, rid: str) -> list[int]:
    history = await operations.handle(client, rid).fetch_history()
    return [e.event_type for e in history.events]


async def test_refused_decision_is_one_line_and_leaves_no_trace(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role)

    async def at_rest() -> bool:
        """No workflow task and no activity (the card's notification) in flight, and the history
        unchanged around the look: nothing will add to it unless a decision does."""
        events = await _event_types(stack.client, rid)
        described = await operations.handle(stack.client, rid).describe()
        idle = not described.raw_description.pending_activities and events[-1] not in _TASK_IN_FLIGHT
        return idle and await _event_types(stack.client, rid) == events

    await eventually(at_rest, what="the request's workflow task to complete")
    before = await _event_types(stack.client, rid)

    with pytest.raises(NotAllowed, match=r"^mallory@example.com is not an approver for instance 'pg'$"):
        await operations.decide(stack.client, rid, "approve", Decision(actor="mallory@example.com"))
    with pytest.raises(NotAllowed, match=r"^only the requester can cancel a request$"):
        await operations.decide(stack.client, rid, "cancel", Decision(actor="dba@example.com"))

    assert await _event_types(stack.client, rid) == before  # a rejected update is not recorded
    status = await stack.status(rid)
    assert status.state == RequestState.PENDING and status.refused == []
    assert not pg.is_member(login, role)


async def test_decision_is_answered_with_its_outcome(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role)

    answer = await operations.decide(stack.client, rid, "approve", Decision(actor="DBA@example.com"))
    assert answer.refused is None
    assert answer.status.decided_by == "dba@example.com"
    await stack.wait_state(rid, RequestState.GRANTED)
    assert pg.is_member(login, role)

    events = await _event_types(stack.client, rid)
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED in events
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED not in events

    # Decided already: the validator says by whom, and the CLI exits 2 with that line.
    r = await stack.cli("deny", rid, "--as", "dba@example.com")
    assert r.code == 2
    assert "already approved by dba@example.com" in r.err
    r = await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
    assert r.code == 0, r.err
    assert r.out.strip() == f"relinquish: {rid} is granted"  # the task that took it left it so
    await stack.wait_state(rid, RequestState.RELINQUISHED)
    assert not pg.is_member(login, role)


@workflow.defn(name="OlderRelease")
class OlderRelease:
    """A request as a worker of the release before the decide update serves it: the status
    query and the signals, no update."""

    def __init__(self) -> None:
        self._status: RequestStatus | None = None

    @workflow.run
    async def run(self, status: RequestStatus) -> RequestStatus:
        self._status = status
        await workflow.wait_condition(lambda: status.state != RequestState.PENDING)
        return status

    @workflow.query(name=contract.STATUS)
    def status(self) -> RequestStatus:
        assert self._status is not None
        return self._status

    @workflow.signal(name=contract.APPROVE)
    def approve(self, d: Decision) -> None:
        assert self._status is not None
        self._status.state = RequestState.APPROVED
        self._status.decided_by = d.actor


def _pending() -> RequestStatus:
    return RequestStatus(
        id=f"older-{uuid.uuid4().hex[:8]}",
        state=RequestState.PENDING,
        requester="alice@example.com",
        instance="pg",
        role="app_ro",
        db_user="alice",
        requested_duration=timedelta(hours=1),
        requested_at=datetime.now(UTC),
        approvers=["dba@example.com"],
    )


async def test_worker_without_the_update_gets_the_signal(temporal, temporal_address: str) -> None:
    client = await Client.connect(temporal_address, data_converter=DATA_CONVERTER)
    queue = f"older-{uuid.uuid4().hex}"
    pending = _pending()
    async with Worker(
        client, task_queue=queue, workflows=[OlderRelease], workflow_runner=UnsandboxedWorkflowRunner()
    ):
        h = await client.start_workflow(OlderRelease.run, pending, id=pending.id, task_queue=queue)
        with pytest.raises(NotAllowed, match=r"^mallory@example.com is not an approver"):
            await operations.decide(client, pending.id, "approve", Decision(actor="mallory@example.com"))

        answer = await operations.decide(client, pending.id, "approve", Decision(actor="dba@example.com"))
        assert answer.refused is None
        assert answer.status.state == RequestState.APPROVED
        assert answer.status.decided_by == "dba@example.com"
        await h.result()

    events = await _event_types(client, pending.id)
    assert events.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED) == 1  # the approval only
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED not in events


async def test_no_worker_is_one_line_and_sends_nothing_twice(temporal, temporal_address: str) -> None:
    """With no worker to answer, the update waits in the server: the caller is told so, and
    no signal is sent besides it (that would be a second decision once the worker is back)."""
    client = await Client.connect(temporal_address, data_converter=DATA_CONVERTER)
    queue = f"older-{uuid.uuid4().hex}"
    pending = _pending()
    async with Worker(
        client, task_queue=queue, workflows=[OlderRelease], workflow_runner=UnsandboxedWorkflowRunner()
    ):
        await client.start_workflow(OlderRelease.run, pending, id=pending.id, task_queue=queue)
        await operations.get_status(client, pending.id)  # the first task is done
    with pytest.raises(RolecallError, match=r"^rolecall's worker has not answered within 1 s; your approve"):
        await operations.decide(client, pending.id, "approve", Decision(actor="dba@example.com"), wait=1.0)
    events = await _event_types(client, pending.id)
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED not in events
    await operations.handle(client, pending.id).terminate("test over")
