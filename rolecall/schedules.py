"""The reconciler's Temporal Schedules: one per instance, created or updated at worker start."""

from __future__ import annotations

import logging

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from rolecall import contract
from rolecall.config import Config
from rolecall.contract import ReconcileInput

log = logging.getLogger("rolecall.schedules")


def schedule_id(task_queue: str, instance: str) -> str:
    return f"{task_queue}/reconcile/{instance}"


def _schedule(config: Config, task_queue: str, instance: str) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            contract.RECONCILE,
            ReconcileInput(instance=instance),
            id=contract.reconcile_id(task_queue, instance),
            task_queue=task_queue,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=config.reconcile.interval)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_reconcile_schedules(client: Client, config: Config, task_queue: str) -> list[str]:
    """Idempotent: create missing schedules, bring existing ones to the configured interval."""
    ids = []
    for name in sorted(config.instances):
        sid = schedule_id(task_queue, name)
        wanted = _schedule(config, task_queue, name)
        try:
            await client.create_schedule(sid, wanted)
            log.info("created reconcile schedule %s every %s", sid, config.reconcile.interval)
        except ScheduleAlreadyRunningError:

            def update(_: ScheduleUpdateInput, s: Schedule = wanted) -> ScheduleUpdate:
                return ScheduleUpdate(schedule=s)

            await client.get_schedule_handle(sid).update(update)
        if not config.reconcile.enabled:
            await client.get_schedule_handle(sid).pause(note="reconcile disabled in config")
        ids.append(sid)
    return ids
