"""The floors' worker: the minimal workflows on a Worker built with the product worker's settings.

The settings are not copied by hand: `build_worker` is called with temporalio's Worker
replaced by a recorder, and the arguments it would have passed (interceptors, graceful
shutdown, and whatever else it sets in the future) are reused with the floors' task queue,
workflows and activities. An experiment's --worker-option applies to both workers.
"""

from __future__ import annotations

import os
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from bench.common import FLOOR_TASK_QUEUE
from bench.floors.activities import FloorActivities
from bench.floors.workflows import WORKFLOWS
from bench.procs import record_collections, trace_memory, until_stopped, worker_options
from rolecall.config import ConfigStore, Settings


def product_worker_arguments(client: Client, config: ConfigStore) -> dict[str, Any]:
    """The keyword arguments `worker.build_worker` gives temporalio's Worker."""
    import worker as worker_module

    captured: dict[str, Any] = {}

    def record(_client: Client, **kwargs: Any) -> None:
        captured.update(kwargs)

    real = getattr(worker_module, "Worker")  # noqa: B009
    setattr(worker_module, "Worker", record)  # noqa: B010
    try:
        settings = Settings()  # the deployment's worker tuning (ROLECALL_*), as the product's
        worker_module.build_worker(
            client,
            config,
            "unused",
            max_cached_workflows=settings.max_cached_workflows,
            workflow_sandbox=settings.workflow_sandbox,
            sticky_timeout=settings.sticky_timeout,
        )
    finally:
        setattr(worker_module, "Worker", real)  # noqa: B010
    return captured


def build_floor_worker(client: Client, config: ConfigStore, instance: str = "pg") -> Worker:
    arguments = product_worker_arguments(client, config)
    activities = FloorActivities(config.get().instances[instance].target())
    arguments.update(worker_options())
    arguments.update(
        task_queue=FLOOR_TASK_QUEUE,
        workflows=WORKFLOWS,
        activities=[activities.grant, activities.revoke],
    )
    return Worker(client, **arguments)


async def serve() -> None:
    from rolecall.temporal import connect
    from worker import freeze_start_up

    trace_memory("floor-worker")
    record_collections("floor-worker")
    client = await connect(Settings())
    config = ConfigStore(os.environ["ROLECALL_CONFIG"])
    worker = build_floor_worker(client, config)
    shared = ", ".join(sorted(product_worker_arguments(client, config)))
    async with worker:
        freeze_start_up()  # as `rolecall worker` does
        print(f"bench floor worker ready (build_worker's arguments: {shared})", flush=True)
        await until_stopped()
