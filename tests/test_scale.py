"""Horizontal workers: two `rolecall worker` processes on one task queue share the requests,
and a request survives the death (SIGKILL) of the worker that granted it.

Who did what is read from the histories: every WorkflowTaskStarted and ActivityTaskStarted
event names the worker's identity (`<pid>@<host>`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from temporalio.api.enums.v1 import EventType

from rolecall.models import RequestState
from rolecall.operations import handle
from tests.conftest import Roles, Stack, eventually
from tests.worker_process import WorkerProcess, start_worker

REQUESTS = 6
GRANT = "20s"


async def workers_of(stack: Stack, rid: str) -> tuple[set[str], str | None]:
    """Identities that ran any task of the request, and the one that ran its grant."""
    seen: set[str] = set()
    scheduled: dict[int, str] = {}
    granted_by = None
    async for e in handle(stack.client, rid).fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = e.activity_task_started_event_attributes
            seen.add(attrs.identity)
            if scheduled.get(attrs.scheduled_event_id) == "grant_role":
                granted_by = attrs.identity
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            seen.add(e.workflow_task_started_event_attributes.identity)
    return seen, granted_by


def owner(workers: list[WorkerProcess], identity: str) -> WorkerProcess:
    [w] = [w for w in workers if identity.startswith(w.identity_prefix)]
    return w


async def test_two_workers_share_work_and_survive_a_kill(
    make_stack, roles: Roles, pg, tmp_path: Path
) -> None:
    """Bound: the request whose grant ran on the killed worker is revoked within 15 s of
    expiry by the other one (sticky-queue timeout 5 s, then the timer's workflow task)."""
    role = roles.role()
    logins = [roles.login(f"u{i}") for i in range(REQUESTS)]
    stack = await make_stack([role], worker=False)
    workers = [start_worker(stack, tmp_path), start_worker(stack, tmp_path)]
    try:
        await asyncio.gather(*(w.ready() for w in workers))
        rids = [await stack.request(login, role, GRANT) for login in logins]
        for rid in rids:
            await stack.cli("approve", rid, "--as", "dba@example.com")
        granted = {rid: await stack.wait_state(rid, RequestState.GRANTED) for rid in rids}

        everyone: set[str] = set()
        grantor: dict[str, str] = {}
        for rid in rids:
            seen, by = await workers_of(stack, rid)
            everyone |= seen
            assert by is not None
            grantor[rid] = by
        # both processes took work (workflow tasks and activities)
        for w in workers:
            assert any(i.startswith(w.identity_prefix) for i in everyone), (w.proc.pid, everyone)

        # kill the worker that ran the grant of the request expiring first
        target = min(rids, key=lambda r: granted[r].expires_at or granted[r].requested_at)
        victim = owner(workers, grantor[target])
        survivor = next(w for w in workers if w is not victim)
        victim.kill()
        index = rids.index(target)
        await eventually(lambda: not pg.is_member(logins[index], role), timeout=60, what="revoke")
        revoked = time.time()
        expires_at = granted[target].expires_at
        assert expires_at is not None
        assert revoked - expires_at.timestamp() < 15, revoked - expires_at.timestamp()
        final = await stack.wait_state(target, RequestState.EXPIRED, timeout=20)
        assert final.revoked_at is not None and final.revoked_at >= expires_at

        # every other request ends too, on the survivor, and nobody keeps the role
        for rid in rids:
            await stack.wait_state(rid, RequestState.EXPIRED, timeout=60)
        assert not any(pg.is_member(login, role) for login in logins)
        seen, _ = await workers_of(stack, target)
        assert any(i.startswith(survivor.identity_prefix) for i in seen)
        assert survivor.proc.poll() is None
    finally:
        for w in workers:
            w.stop()
