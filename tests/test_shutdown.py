"""SIGTERM (`docker stop`, a rollout) lets the revoke in flight finish in the stopping worker.

Real `rolecall worker` processes. The REVOKE is held in a TCP proxy in front of PostgreSQL,
so the signal lands exactly while the revoke activity runs (nothing sleeps in product code).
A stopping worker polls for nothing new, so the workflow's next step (recording `expired`,
telling the requester) is a task for the next worker; the revoke itself is not redone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType

from rolecall.models import AccessRequest, RequestState
from rolecall.operations import handle
from rolecall.temporal import request_id
from tests.conftest import REPO, Roles, Stack, eventually
from tests.faults.support import HoldingProxy, assert_no_grant_left_behind
from tests.worker_process import WorkerProcess, start_worker
from workflows.access_request import AccessRequestWorkflow

# revoke_role heartbeats every 2 s with a 10 s heartbeat timeout (workflows/access_request.py).
# Holding the REVOKE past that timeout shows the heartbeats kept flowing during the shutdown:
# without them the server would time the attempt out and want a second one.
HEARTBEAT_TIMEOUT = 10
# After the graceful period the activity is cancelled; psycopg then asks the server to cancel
# the statement (up to 5 s to reach it) and waits up to 5 s more before it drops the connection.
PSYCOPG_CANCEL = 10


@dataclass
class RevokeAttempts:
    scheduled: int
    started: list[tuple[int, str]]  # (attempt, worker identity) of each ActivityTaskStarted
    completed_by: list[str]


async def revoke_attempts(stack: Stack, rid: str) -> RevokeAttempts:
    """What the history says of revoke_role: scheduled how often, started (attempt), completed by."""
    ids: set[int] = set()
    started: list[tuple[int, str]] = []
    completed: list[str] = []
    for e in (await handle(stack.client, rid).fetch_history()).events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if e.activity_task_scheduled_event_attributes.activity_type.name == "revoke_role":
                ids.add(e.event_id)
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            a = e.activity_task_started_event_attributes
            if a.scheduled_event_id in ids:
                started.append((a.attempt, a.identity))
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            c = e.activity_task_completed_event_attributes
            if c.scheduled_event_id in ids:
                completed.append(c.identity)
    return RevokeAttempts(len(ids), started, completed)


async def task_runners(stack: Stack, rid: str) -> list[str]:
    """The identity of every worker that started a workflow task of the request."""
    return [
        e.workflow_task_started_event_attributes.identity
        for e in (await handle(stack.client, rid).fetch_history()).events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
    ]


def logged(worker: WorkerProcess, text: str) -> bool:
    return any(text in str(r.get("message", "")) for r in worker.records())


async def exit_code(worker: WorkerProcess, timeout: float) -> int:
    await eventually(lambda: worker.proc.poll() is not None, timeout, "the worker to exit by itself")
    return int(worker.proc.returncode)


async def granted_and_revoke_held(stack: Stack, proxy: HoldingProxy, login: str, role: str) -> str:
    """A 2 s grant whose expiry REVOKE is now stuck in the proxy: the revoke activity is running."""
    rid = await stack.request(login, role, "2s")
    proxy.hold(b'REVOKE "')
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.GRANTED, timeout=20)
    await eventually(lambda: bool(proxy.held), 20, "the REVOKE to reach the proxy")
    return rid


async def test_sigterm_during_revoke_the_stopping_worker_finishes_it(
    make_stack, roles: Roles, pg, tmp_path: Path
) -> None:
    """SIGTERM with the REVOKE in flight; the REVOKE is let through 11 s later.

    Bound: the worker keeps running the revoke (heartbeating) past the 10 s heartbeat timeout,
    exits 0 within 10 s of the REVOKE landing, and the history records that one attempt, by
    that worker. The replacement (started after it exited) only finishes the workflow:
    revoked_at is recorded by it, so the bound on it is 11 s + 10 s + 30 s after expiry.
    """
    role, login, latecomer = roles.role(), roles.login(), roles.login("bob")
    proxy = HoldingProxy(pg.dsn)
    await proxy.start()
    stack = await make_stack([role], dsn=proxy.dsn, worker=False, connect_timeout=2)
    first = start_worker(stack, tmp_path, ROLECALL_GRACEFUL_SHUTDOWN="30s")
    second: WorkerProcess | None = None
    try:
        await first.ready()
        rid = await granted_and_revoke_held(stack, proxy, login, role)
        first.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await eventually(lambda: logged(first, "worker stopping"), 10, "the stopping line")
        assert logged(first, "waiting up to 30s for 1 in-flight activity (revoke_role)"), first.lines()
        # New work during the drain is not taken: a request started now waits for the next worker.
        later = AccessRequest(
            requester=f"{latecomer}@example.com", instance="pg", role=role, duration=timedelta(hours=1)
        )
        late_id = request_id("pg", role, later.requester)
        await stack.client.start_workflow(
            AccessRequestWorkflow.run, later, id=late_id, task_queue=stack.task_queue
        )
        await eventually(
            lambda: time.monotonic() - signalled > HEARTBEAT_TIMEOUT + 1 or first.proc.poll() is not None,
            HEARTBEAT_TIMEOUT + 5,
            "the heartbeat timeout to pass",
        )
        assert first.proc.poll() is None, f"left with the REVOKE in flight: {first.lines()[-3:]}"
        assert pg.is_member(login, role)
        proxy.release(forward=True)
        await eventually(lambda: not pg.is_member(login, role), 10, "the held REVOKE to land")
        assert await exit_code(first, 10) == 0
        assert logged(first, "worker stopped after"), first.lines()[-3:]
        assert logged(first, ": 1 finished"), first.lines()[-3:]

        # In the history before any other worker exists: one attempt, run and completed by it.
        attempts = await revoke_attempts(stack, rid)
        assert attempts.scheduled == 1, attempts
        assert [n for n, _ in attempts.started] == [1], attempts
        assert [i.startswith(first.identity_prefix) for _, i in attempts.started] == [True], attempts
        assert [i.startswith(first.identity_prefix) for i in attempts.completed_by] == [True], attempts
        assert await task_runners(stack, late_id) == [], "the stopping worker took new work"

        second = start_worker(stack, tmp_path)
        final = await stack.wait_state(rid, RequestState.EXPIRED, timeout=30)
        assert await revoke_attempts(stack, rid) == attempts, "the revoke was run again"
        bound = timedelta(seconds=HEARTBEAT_TIMEOUT + 1 + 10 + 30)
        await assert_no_grant_left_behind(stack.client, pg, final, login, role, bound)
        await stack.wait_state(late_id, RequestState.PENDING, timeout=20)
        runners = await task_runners(stack, late_id)
        assert runners and all(i.startswith(second.identity_prefix) for i in runners), runners
    finally:
        first.kill()
        if second is not None:
            second.stop()
        proxy.release(forward=False)
        await proxy.stop()


async def test_revoke_held_past_the_graceful_timeout_is_finished_by_the_next_worker(
    make_stack, roles: Roles, pg, tmp_path: Path
) -> None:
    """ROLECALL_GRACEFUL_SHUTDOWN=2s and the REVOKE never gets through to the stopping worker.

    Bound: the worker exits 0 by itself within 2 s + 10 s (psycopg's cancel) + 3 s of the
    signal, the REVOKE still held; the revoke's retry runs on the next worker, started then,
    and the membership is gone no later than expiry + 15 s + 15 s.
    """
    role, login = roles.role(), roles.login()
    proxy = HoldingProxy(pg.dsn)
    await proxy.start()
    stack = await make_stack([role], dsn=proxy.dsn, worker=False, connect_timeout=2)
    first = start_worker(stack, tmp_path, ROLECALL_GRACEFUL_SHUTDOWN="2s")
    second: WorkerProcess | None = None
    try:
        await first.ready()
        rid = await granted_and_revoke_held(stack, proxy, login, role)
        first.proc.send_signal(signal.SIGTERM)
        assert await exit_code(first, 2 + PSYCOPG_CANCEL + 3) == 0
        assert logged(first, "waiting up to 2s for 1 in-flight activity (revoke_role)"), first.lines()
        assert logged(first, ": 1 cancelled at the 2s limit"), first.lines()[-3:]
        assert pg.is_member(login, role)  # nothing reached PostgreSQL

        proxy.release(forward=False)  # the stopped worker's REVOKE never reaches PostgreSQL
        second = start_worker(stack, tmp_path)
        await eventually(lambda: not pg.is_member(login, role), 20, "the next worker's revoke")
        final = await stack.wait_state(rid, RequestState.EXPIRED, timeout=20)
        attempts = await revoke_attempts(stack, rid)
        # The same activity, retried (attempt 2), not a new one; run and completed by the new worker.
        assert attempts.scheduled == 1, attempts
        assert [n for n, _ in attempts.started] == [2], attempts
        assert all(i.startswith(second.identity_prefix) for _, i in attempts.started), attempts
        assert all(i.startswith(second.identity_prefix) for i in attempts.completed_by), attempts
        bound = timedelta(seconds=2 + PSYCOPG_CANCEL + 3 + 15)
        await assert_no_grant_left_behind(stack.client, pg, final, login, role, bound)
    finally:
        first.kill()
        if second is not None:
            second.stop()
        proxy.release(forward=False)
        await proxy.stop()


@pytest.mark.parametrize("command", [["-m", "rolecall.cli", "worker"], ["worker.py"]])
def test_a_bad_graceful_shutdown_stops_the_worker_at_start(command: list[str], tmp_path: Path) -> None:
    """One line naming the variable, exit 2, before anything is connected to."""
    env = dict(os.environ, ROLECALL_GRACEFUL_SHUTDOWN="30", ROLECALL_TEMPORAL_ADDRESS="127.0.0.1:1")
    env.pop("ROLECALL_CONFIG", None)
    done = subprocess.run(
        [sys.executable, *command], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "rolecall: error: ROLECALL_GRACEFUL_SHUTDOWN: duration '30' is not understood: "
        "use e.g. 90s, 15m, 2h or 1h30m"
    ]
