"""What every fault test needs: a proxy that can hold one SQL statement, worker processes,
and the invariant each test ends with.

The invariant: every membership rolecall granted is gone no later than expiry plus the
test's bound, and the request reached a final state whose notification to the requester
was delivered (its `notify` activity completed, read from the Temporal history).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from rolecall.models import RequestState, RequestStatus
from rolecall.operations import handle
from tests.conftest import REPO, Postgres
from tests.tcp_proxy import PostgresProxy

# The notification that tells the requester how their request ended, per final state.
FINAL_EVENT = {
    RequestState.EXPIRED: "expired",
    RequestState.RELINQUISHED: "relinquished",
    RequestState.FAILED: "failed",
    RequestState.DENIED: "denied",
    RequestState.CANCELLED: "cancelled",
    RequestState.TIMED_OUT: "timed_out",
    RequestState.REJECTED: "rejected",
}


@dataclass
class _Held:
    data: bytes
    release: asyncio.Event = field(default_factory=asyncio.Event)
    forward: bool = True


class HoldingProxy(PostgresProxy):
    """A PostgresProxy that can hold back any client message containing a pattern.

    `hold(b'GRANT "')` makes the next GRANT wait inside the proxy (the activity is then
    stuck in its statement, as with a slow or hung database); `release(forward=...)` sends
    it on, even if the client that wrote it is dead by then, or drops it and the connection.
    """

    def __init__(self, target_dsn: str) -> None:
        super().__init__(target_dsn)
        self.pattern: bytes | None = None
        self.held: list[_Held] = []

    def hold(self, pattern: bytes) -> None:
        self.pattern = pattern

    def release(self, forward: bool = True) -> None:
        self.pattern = None
        for h in self.held:
            h.forward = forward
            h.release.set()

    async def forward(self, data: bytes, upstream: bool) -> bool:
        if upstream and self.pattern is not None and self.pattern in data:
            held = _Held(data)
            self.held.append(held)
            await held.release.wait()
            return held.forward
        return True


def worker_process(config: Path, address: str, task_queue: str) -> subprocess.Popen[bytes]:
    """A real `rolecall worker` process (logging notifications, no Slack)."""
    env = dict(os.environ)
    env.pop("SLACK_BOT_TOKEN", None)
    env.update(
        ROLECALL_CONFIG=str(config),
        ROLECALL_TEMPORAL_ADDRESS=address,
        ROLECALL_TASK_QUEUE=task_queue,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "rolecall.cli", "worker"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


async def delivered_notifications(client: Client, rid: str) -> list[str]:
    """Events whose `notify` activity completed: the person was really told (in order)."""
    scheduled: dict[int, str] = {}
    done: list[str] = []
    async for e in handle(client, rid).fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = e.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == "notify":
                scheduled[e.event_id] = json.loads(attrs.input.payloads[0].data)["event"]
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            sid = e.activity_task_completed_event_attributes.scheduled_event_id
            if sid in scheduled:
                done.append(scheduled[sid])
    return done


async def activities_scheduled(client: Client, rid: str) -> list[str]:
    """Every activity the request ran, regular or local (a local one is a marker in history)."""
    names = []
    async for e in handle(client, rid).fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            names.append(e.activity_task_scheduled_event_attributes.activity_type.name)
        elif e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = e.marker_recorded_event_attributes
            if marker.marker_name == "core_local_activity" and "data" in marker.details:
                names.append(json.loads(marker.details["data"].payloads[0].data)["activity_type"])
    return names


def holds(pg: Postgres, login: str, role: str) -> bool:
    """Membership, direct or not; False when the role (or login) no longer exists."""
    exists = pg.execute("SELECT count(*) FROM pg_roles WHERE rolname IN (%s, %s)", [login, role])
    return exists[0][0] == 2 and pg.is_member(login, role)


async def assert_no_grant_left_behind(
    client: Client,
    pg: Postgres,
    status: RequestStatus,
    login: str,
    role: str,
    bound: timedelta,
) -> None:
    """The invariant every fault test ends with (see the module docstring).

    Notifications are checked once the workflow has closed: it closes only after its last
    notification was sent, which after a killed worker waits out that activity's timeout.
    """
    assert status.state.is_final, f"{status.id} is {status.state.value}, not final"
    await asyncio.wait_for(handle(client, status.id).result(), timeout=90)
    assert not holds(pg, login, role), f"{login} still holds {role} after {status.id} ended"
    if status.granted_at is not None:
        assert status.expires_at is not None and status.revoked_at is not None
        late = status.revoked_at - status.expires_at
        assert late <= bound, f"revoked {late} after expiry, bound {bound}"
    told = await delivered_notifications(client, status.id)
    assert FINAL_EVENT[status.state] in told, f"requester never told of {status.state.value}: {told}"
