"""The rolecall worker: one process that runs request workflows and their activities."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient
from temporalio.client import Client
from temporalio.worker import Worker

from activities.notify import Notifier, NotifyActivities, no_approver_groups
from activities.pagerduty import PagerDutyActivities
from activities.postgres import PostgresActivities
from activities.temporal import TemporalActivities
from rolecall.config import ConfigStore, Settings
from rolecall.logs import setup_logging
from rolecall.metrics import MetricsInterceptor, prometheus_runtime, report_open_grants
from rolecall.schedules import ensure_reconcile_schedules
from rolecall.slack_identity import SlackIdentity
from rolecall.temporal import connect
from workflows.access_request import AccessRequestWorkflow
from workflows.reconcile import ReconcileWorkflow

log = logging.getLogger("rolecall.worker")


def build_worker(
    client: Client,
    config: ConfigStore,
    task_queue: str,
    notifier: Notifier | None = None,
    slack_client: AsyncWebClient | None = None,
    slack_identity: SlackIdentity | None = None,
) -> Worker:
    """The worker with every workflow and activity registered; tests build theirs here too.

    With a Slack client, notifications go to Slack and approver groups are looked up there.
    """
    postgres = PostgresActivities(config)
    pagerduty = PagerDutyActivities(config)
    expand_groups: Callable[..., Any] = no_approver_groups
    if slack_client is not None:
        from activities.slack import SlackActivities, SlackNotifier

        notifier = notifier or SlackNotifier(slack_client)
        expand_groups = SlackActivities(slack_client, slack_identity).expand_approver_groups
    notify = NotifyActivities(notifier)
    temporal = TemporalActivities(client, config)
    return Worker(
        client,
        task_queue=task_queue,
        interceptors=[MetricsInterceptor()],
        workflows=[AccessRequestWorkflow, ReconcileWorkflow],
        activities=[
            postgres.check_request,
            postgres.prepare_grant,
            postgres.grant_role,
            postgres.revoke_role,
            postgres.list_memberships,
            pagerduty.check_oncall,
            notify.notify,
            notify.report,
            temporal.open_grants,
            expand_groups,
        ],
    )


async def run(settings: Settings | None = None) -> None:
    """Run until SIGINT/SIGTERM, then finish in-flight activities and stop."""
    settings = settings or Settings()
    config = ConfigStore(os.environ.get("ROLECALL_CONFIG") or settings.config)
    # Metrics: the SDK's and rolecall's, from every client and worker built on this runtime.
    runtime = prometheus_runtime(settings.metrics_bind) if settings.metrics_bind else None
    client = await connect(settings, runtime=runtime)
    slack_client = None
    if os.environ.get("SLACK_BOT_TOKEN"):
        from activities.slack import web_client

        slack_client = web_client(
            os.environ["SLACK_BOT_TOKEN"], base_url=os.environ.get("SLACK_API_URL") or None
        )
        log.info("notifications go to Slack")
    identity = None
    if slack_client is not None:
        identity = SlackIdentity(slack_client, settings.slack_team_id, settings.slack_enterprise_id)
    worker = build_worker(
        client, config, settings.task_queue, slack_client=slack_client, slack_identity=identity
    )
    await ensure_reconcile_schedules(client, config.get(), settings.task_queue)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker, asyncio.TaskGroup() as background:
        if runtime is not None:
            log.info("metrics on http://%s/metrics", settings.metrics_bind)
            reporter = background.create_task(
                report_open_grants(
                    client, runtime.metric_meter, settings.task_queue, lambda: config.get().instances
                )
            )
        log.info(
            "worker %s ready: task queue %r on %s (namespace %s), instances: %s",
            client.identity,
            settings.task_queue,
            settings.temporal_address,
            settings.temporal_namespace,
            ", ".join(sorted(config.get().instances)),
        )
        await stop.wait()
        log.info("worker stopping")
        if runtime is not None:
            reporter.cancel()


if __name__ == "__main__":
    setup_logging()
    asyncio.run(run())
