"""No grant left behind: database outages, a killed worker, hour-long grants, replay.

Each test states its bound and ends by asserting that no membership outlives it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from rolecall.models import AccessRequest, Decision, RequestState
from rolecall.operations import handle, list_requests, submit
from rolecall.temporal import DATA_CONVERTER
from tests.conftest import Roles, eventually
from tests.faults.support import worker_process
from tests.tcp_proxy import PostgresProxy
from workflows.access_request import AccessRequestWorkflow

HISTORIES = Path(__file__).parent / "histories"


async def _request_events(client: Client, rid: str) -> list[HistoryEvent]:
    """The request's history, oldest first, across the runs a held grant continued through."""
    runs: list[list[HistoryEvent]] = []
    run_id: str | None = None
    while True:
        run = [e async for e in client.get_workflow_handle(rid, run_id=run_id).fetch_history_events()]
        runs.insert(0, run)
        run_id = run[0].workflow_execution_started_event_attributes.continued_execution_run_id
        if not run_id:
            return [e for events in runs for e in events]


async def _notified_events(client: Client, rid: str) -> list[str]:
    """The notification events the request scheduled, read from its Temporal history."""
    events = []
    for e in await _request_events(client, rid):
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = e.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == "notify":
                payload = json.loads(attrs.input.payloads[0].data)
                events.append(payload["event"])
    return events


async def test_revoke_retried_through_a_database_outage(make_stack, roles: Roles, pg) -> None:
    """Bound: revoked within 5 s of the database coming back; alerted after 2 failures."""
    role, login = roles.role(), roles.login()
    proxy = PostgresProxy(pg.dsn)
    await proxy.start()
    stack = await make_stack([role], dsn=proxy.dsn, revoke_alert_after=2, connect_timeout=2)
    rid = await stack.request(login, role)
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.GRANTED)

    await proxy.stop()
    r = await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
    assert r.code == 0, r.err
    await stack.wait_state(rid, RequestState.REVOKING)
    await eventually(lambda: _has_event(stack.client, rid, "revoke_failing"), timeout=20, what="revoke alert")
    assert pg.is_member(login, role)  # the database is down: nothing could be revoked yet
    # A failing revoke is findable in the Temporal UI's list; a revoke that succeeds at once
    # never shows "revoking" there (test_a_revoke_that_succeeds_is_not_indexed_as_revoking).
    await eventually(lambda: _listed_as(stack.client, rid, "revoking"), timeout=10, what="listed as revoking")

    await proxy.start()
    back = time.monotonic()
    status = await stack.wait_state(rid, RequestState.RELINQUISHED, timeout=40)
    assert not pg.is_member(login, role)
    assert time.monotonic() - back < 35  # the next retry, at most the 30 s backoff cap
    assert status.revoked_at is not None
    await proxy.stop()


async def _listed_as(client: Client, rid: str, state: str) -> bool:
    return any(row["id"] == rid for row in await list_requests(client, state=state))


async def _indexed_states(client: Client, rid: str) -> list[str]:
    """Every RolecallState the request's runs upserted, in order."""
    states = []
    for event in await _request_events(client, rid):
        if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            if "RolecallState" in fields:
                states.append(json.loads(fields["RolecallState"].data))
    return states


async def test_a_revoke_that_succeeds_is_not_indexed_as_revoking(make_stack, roles: Roles, pg) -> None:
    """The expiry's revoke upserts nothing before it runs: one upsert fewer per request, which
    is most of a mass expiry's cost on the server (bench/README.md, "Levers")."""
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role, "2s")
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.EXPIRED, timeout=30)
    assert not pg.is_member(login, role)
    assert await _indexed_states(stack.client, rid) == ["approved", "granted", "expired"]  # pending: at start


async def _has_event(client: Client, rid: str, event: str) -> bool:
    return event in await _notified_events(client, rid)


async def test_grant_retried_while_database_down_then_fails_clearly(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    proxy = PostgresProxy(pg.dsn)
    await proxy.start()
    stack = await make_stack([role], dsn=proxy.dsn, grant_timeout="4s", connect_timeout=1)
    rid = await stack.request(login, role)
    await proxy.stop()
    await stack.cli("approve", rid, "--as", "dba@example.com")
    status = await stack.wait_state(rid, RequestState.FAILED, timeout=60)
    assert status.error is not None and status.error.startswith("grant failed:")
    assert "failed" in await _notified_events(stack.client, rid)
    await proxy.start()
    assert not pg.is_member(login, role)
    await proxy.stop()


async def test_grant_retried_until_database_is_back(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    proxy = PostgresProxy(pg.dsn)
    await proxy.start()
    stack = await make_stack([role], dsn=proxy.dsn, grant_timeout="1m", connect_timeout=1)
    rid = await stack.request(login, role)
    await proxy.stop()
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await asyncio.sleep(2)
    assert (await stack.status(rid)).state == RequestState.APPROVED
    await proxy.start()
    await stack.wait_state(rid, RequestState.GRANTED, timeout=30)
    assert pg.is_member(login, role)
    await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
    await stack.wait_state(rid, RequestState.RELINQUISHED)
    assert not pg.is_member(login, role)
    await proxy.stop()


def _worker_process(stack) -> subprocess.Popen[bytes]:
    return worker_process(stack.config_path, stack.address, stack.task_queue)


async def test_worker_killed_while_granted_still_revokes_on_time(make_stack, roles: Roles, pg) -> None:
    """A `rolecall worker` process SIGKILLed mid-grant; a new one revokes at expiry.

    Bound: revoked within 15 s of expiry (the sticky-queue timeout, ROLECALL_STICKY_TIMEOUT,
    is 10 s: the expiry's task waits that long for the killed worker; plus start-up).
    """
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], worker=False)
    proc = _worker_process(stack)
    try:
        rid = await stack.request(login, role, "8s")
        await stack.cli("approve", rid, "--as", "dba@example.com")
        status = await stack.wait_state(rid, RequestState.GRANTED, timeout=30)
        assert pg.is_member(login, role)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = _worker_process(stack)
        await eventually(lambda: not pg.is_member(login, role), timeout=40, what="revoke")
        revoked = time.time()
        assert status.expires_at is not None
        assert revoked - status.expires_at.timestamp() < 15
        final = await stack.wait_state(rid, RequestState.EXPIRED, timeout=20)
        assert final.revoked_at is not None
    finally:
        proc.kill()
        proc.wait()


async def test_an_expiry_woken_late_tells_after_its_revoke_not_before_it(
    make_stack, roles: Roles, pg, monkeypatch
) -> None:
    """An expiry whose workflow task starts seconds late (here: no worker until 3 s after it,
    as in a burst where it queues behind others) REVOKEs at once, then waits about twice its
    lateness before it indexes "expired" and tells the requester: those tasks would have
    delayed the REVOKEs still queued (bench/README.md, "Burst tail"). Its status says
    "expired" at once; nothing is left undone."""
    monkeypatch.setenv("ROLECALL_STICKY_TIMEOUT", "1s")  # the killed worker's queue hands over fast
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], worker=False)
    proc = _worker_process(stack)
    try:
        rid = await stack.request(login, role, "4s")
        await stack.cli("approve", rid, "--as", "dba@example.com")
        granted = await stack.wait_state(rid, RequestState.GRANTED, timeout=30)
        assert granted.expires_at is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        await asyncio.sleep(max(0.0, granted.expires_at.timestamp() + 3 - time.time()))
        proc = _worker_process(stack)
        await eventually(lambda: not pg.is_member(login, role), timeout=30, what="revoke")
        status = await stack.wait_state(rid, RequestState.EXPIRED, timeout=10)
        assert status.revoked_at is not None
        description = await handle(stack.client, rid).describe()
        assert description.status is not None and description.status.name == "RUNNING"
        assert "expired" not in await _notified_events(stack.client, rid)
        assert "expired" not in await _indexed_states(stack.client, rid)

        await asyncio.wait_for(handle(stack.client, rid).result(), 60)
        assert "expired" in await _notified_events(stack.client, rid)
        assert (await _indexed_states(stack.client, rid))[-1] == "expired"
        assert not pg.is_member(login, role)
    finally:
        proc.kill()
        proc.wait()


async def test_eight_hour_grant_expires_with_time_skipping(temporal, make_stack, roles: Roles, pg):
    """The dev server's time skipping runs an 8-hour grant to its revoke in seconds."""
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    req = AccessRequest(
        requester=f"{login}@example.com", instance="pg", role=role, duration=timedelta(hours=8)
    )
    status = await submit(temporal.client, req, stack.task_queue)  # the time-skipping client
    h = temporal.client.get_workflow_handle_for(AccessRequestWorkflow.run, status.id)
    await h.signal(AccessRequestWorkflow.approve, Decision(actor="dba@example.com"))
    granted = await stack.wait_state(status.id, RequestState.GRANTED)
    assert pg.is_member(login, role)
    started = time.monotonic()
    await temporal.fast_forward(h, timedelta(hours=8, minutes=1))
    final = await stack.wait_state(status.id, RequestState.EXPIRED, timeout=30)
    assert time.monotonic() - started < 30
    assert not pg.is_member(login, role)
    assert final.revoked_at is not None and granted.expires_at is not None
    assert final.revoked_at >= granted.expires_at


async def test_recorded_histories_replay(make_stack, roles: Roles) -> None:
    """Histories recorded from earlier versions must replay: running requests survive upgrades.

    New histories are recorded by running tests/record_histories.py; fresh ones are replayed too.
    """
    files = sorted(HISTORIES.glob("*.json"))
    assert files, "no recorded histories in tests/histories"
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role)
    await stack.cli("deny", rid, "--as", "dba@example.com", "--reason", "not today")
    await stack.wait_state(rid, RequestState.DENIED)
    fresh = await handle(stack.client, rid).fetch_history()
    histories = [WorkflowHistory.from_json(f.stem, f.read_text()) for f in files] + [fresh]
    replayer = Replayer(workflows=[AccessRequestWorkflow], data_converter=DATA_CONVERTER)
    async with replayer.workflow_replay_iterator(_aiter(histories)) as results:
        async for result in results:
            assert result.replay_failure is None, result.replay_failure


async def _aiter(items):
    for item in items:
        yield item
