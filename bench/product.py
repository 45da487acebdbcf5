"""Requests through the product's own operations (what the CLI and the Slack app use)."""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from datetime import timedelta
from typing import Any

from bench.common import pct
from bench.stack import Stack


def access_request(stack: Stack, index: int, role: str, duration: timedelta) -> Any:
    from rolecall.models import AccessRequest

    login = stack.logins[index]
    return AccessRequest(
        requester=stack.email(login),
        requester_name=f"Bench {index}",
        instance="pg",
        role=role,
        duration=duration,
        reason="benchmark",
        source="slack",
        slack_user_id=stack.slack_user(index),
    )


async def submit(stack: Stack, index: int, role: str, duration: timedelta) -> str:
    from rolecall import operations

    status = await operations.submit(
        stack.client, access_request(stack, index, role, duration), stack.task_queue
    )
    return str(status.id)


async def send_signal(stack: Stack, rid: str, name: str, actor: str) -> None:
    """The signal alone (no pre-check): what bulk set-up uses to go fast."""
    from rolecall import operations
    from rolecall.models import Decision

    await operations.handle(stack.client, rid).signal(name, Decision(actor=actor, reason="bench", via="cli"))


async def result(stack: Stack, rid: str) -> Any:
    from rolecall import operations

    return await asyncio.wait_for(operations.handle(stack.client, rid).result(), 120)


async def history_shape(stack: Stack, workflow_id: str) -> str:
    """Events and activities (regular and local) in one closed workflow's history."""
    history = await stack.client.get_workflow_handle(workflow_id).fetch_history()
    kinds: Counter[str] = Counter()
    markers = 0
    for event in history.events:
        attrs = event.activity_task_scheduled_event_attributes
        if attrs.activity_type.name:
            kinds[attrs.activity_type.name] += 1
        if event.marker_recorded_event_attributes.marker_name == "core_local_activity":
            markers += 1
    acts = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in kinds.items())
    shape = f"{len(history.events)} events, {sum(kinds.values())} activities" + (f" ({acts})" if acts else "")
    return shape + (f", {markers} local activities" if markers else "")


async def event_offsets(stack: Stack, workflow_id: str, origin: float, after: str) -> dict[str, float]:
    """Seconds from `origin` (epoch) to each event of the workflow's latest run that has an
    `after` event, from the first one on (event type names without EVENT_TYPE_), keyed
    "TYPE #n" (n counts that type from `after`): where a request's time went, read from the
    server's own clock. For an update, from the workflow task that took it."""
    from temporalio.api.enums.v1 import EventType

    history = await stack.client.get_workflow_handle(workflow_id).fetch_history()
    for _ in range(5):  # a held grant continues in a fresh run 15 s after the GRANT: walk back
        start = history.events[0].workflow_execution_started_event_attributes
        kinds = {EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in history.events}
        if after in kinds or not start.continued_execution_run_id:
            break
        history = await stack.client.get_workflow_handle(
            workflow_id, run_id=start.continued_execution_run_id
        ).fetch_history()
    names = [EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in history.events]
    if after not in names:
        return {}
    first = names.index(after)
    if after == "WORKFLOW_EXECUTION_UPDATE_ACCEPTED":
        # The decision's update is the run's last (the first is the submission's). It is
        # recorded when the workflow task that took it completes: its time starts at that
        # task's scheduling.
        first = len(names) - 1 - names[::-1].index(after)
        while first > 0 and names[first] != "WORKFLOW_TASK_SCHEDULED":
            first -= 1
    out: dict[str, float] = {}
    seen: Counter[str] = Counter()
    for name, event in zip(names[first:], history.events[first:], strict=True):
        seen[name] += 1
        out[f"{name} #{seen[name]}"] = event.event_time.ToMicroseconds() / 1e6 - origin
    return out


def median_offsets(offsets: list[Any]) -> str:
    """'TYPE #n p50 / p99' for every key present in at least half of `offsets`, in time order."""
    good = [o for o in offsets if isinstance(o, dict)]
    keys: dict[str, list[float]] = {}
    for o in good:
        for k, v in o.items():
            keys.setdefault(k, []).append(v)
    rows = sorted(((statistics.median(v), k, v) for k, v in keys.items() if len(v) * 2 >= len(good)))
    return "; ".join(
        f"{k.lower().replace('_', ' ')} {med * 1000:.0f} ms (p99 {pct(v, 99) * 1000:.0f})"
        for med, k, v in rows
    )
