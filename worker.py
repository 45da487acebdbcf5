"""The rolecall worker: one process that runs request workflows and their activities."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    UnsandboxedWorkflowRunner,
    Worker,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.decisions import DecisionActivities
from activities.notify import Notifier, NotifyActivities, no_approver_groups, no_group_membership
from activities.pagerduty import PagerDutyActivities
from activities.postgres import PostgresActivities
from activities.temporal import TemporalActivities
from rolecall.config import (
    GRACEFUL_SHUTDOWN,
    STICKY_TIMEOUT,
    WORKFLOW_CACHE,
    ConfigStore,
    Settings,
    load_settings,
)
from rolecall.durations import format_duration
from rolecall.errors import ConfigError
from rolecall.logs import setup_logging
from rolecall.metrics import MetricsInterceptor, prometheus_runtime, report_open_grants
from rolecall.pg import close_idle
from rolecall.schedules import ensure_reconcile_schedules
from rolecall.slack_identity import SlackIdentity
from rolecall.temporal import connect
from workflows.access_request import AccessRequestWorkflow
from workflows.catalog import CatalogWorkflow
from workflows.reconcile import ReconcileWorkflow

log = logging.getLogger("rolecall.worker")


class InFlight(Interceptor):
    """The activities this process is running, so a stopping worker can say what it waits for."""

    def __init__(self) -> None:
        self.running: Counter[str] = Counter()
        self.stopping = False
        # How the activities still running at the stop ended: finished, failed or cut.
        self.ended: Counter[str] = Counter()

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Counted(next, self)

    def describe(self) -> str:
        """`2 in-flight activities (grant_role, revoke_role)`."""
        total = sum(self.running.values())
        if not total:
            return "no in-flight activities"
        names = ", ".join(sorted(self.running.elements()))
        return f"{total} in-flight {'activity' if total == 1 else 'activities'} ({names})"


class _Counted(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, counts: InFlight) -> None:
        super().__init__(next)
        self._counts = counts

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        name = activity.info().activity_type
        self._counts.running[name] += 1
        outcome = "cut"  # cancelled: at the end of the graceful period (or by the workflow)
        try:
            result = await super().execute_activity(input)
            outcome = "finished"
            return result
        except Exception:
            outcome = "failed"
            raise
        finally:
            self._counts.running[name] -= 1
            if not self._counts.running[name]:
                del self._counts.running[name]
            if self._counts.stopping:
                self._counts.ended[outcome] += 1


def build_worker(
    client: Client,
    config: ConfigStore,
    task_queue: str,
    notifier: Notifier | None = None,
    slack_client: AsyncWebClient | None = None,
    slack_identity: SlackIdentity | None = None,
    *,
    graceful_shutdown: timedelta = GRACEFUL_SHUTDOWN,
    interceptors: Sequence[Interceptor] = (),
    decision_key: bytes | None = None,
    max_cached_workflows: int = WORKFLOW_CACHE,
    workflow_sandbox: bool = True,
    sticky_timeout: timedelta = STICKY_TIMEOUT,
) -> Worker:
    """The worker with every workflow and activity registered; tests build theirs here too.

    With a Slack client, notifications go to Slack and approver groups are looked up there.
    At shutdown the worker stops polling at once and gives the activities it is running
    `graceful_shutdown` to finish (their heartbeats keep flowing meanwhile); only then are
    they cancelled, and Temporal retries them on another worker.

    Without the sandbox, workflow code runs as plain Python: each cached workflow no longer
    re-imports its module, which is most of what it holds (bench/README.md). Determinism is
    then guarded by the tests, which always run the sandbox, and by the replay test.
    """
    postgres = PostgresActivities(config)
    pagerduty = PagerDutyActivities(config)
    expand_groups: Callable[..., Any] = no_approver_groups
    group_check: Callable[..., Any] = no_group_membership
    if slack_client is not None:
        from activities.slack import SlackActivities, SlackNotifier

        notifier = notifier or SlackNotifier(slack_client)
        slack = SlackActivities(slack_client, slack_identity)
        expand_groups, group_check = slack.expand_approver_groups, slack.still_in_groups
    notify = NotifyActivities(notifier)
    temporal = TemporalActivities(client, config)
    decisions = DecisionActivities(decision_key)
    return Worker(
        client,
        task_queue=task_queue,
        interceptors=[MetricsInterceptor(), *interceptors],
        graceful_shutdown_timeout=graceful_shutdown,
        max_cached_workflows=max_cached_workflows,
        sticky_queue_schedule_to_start_timeout=sticky_timeout,
        workflow_runner=SandboxedWorkflowRunner() if workflow_sandbox else UnsandboxedWorkflowRunner(),
        workflows=[AccessRequestWorkflow, ReconcileWorkflow, CatalogWorkflow],
        activities=[
            decisions.verify_decision,
            postgres.check_request,
            postgres.prepare_grant,
            postgres.grant_role,
            postgres.revoke_role,
            postgres.list_memberships,
            postgres.list_requestable_roles,
            pagerduty.check_oncall,
            notify.notify,
            notify.report,
            temporal.ledger,
            expand_groups,
            group_check,
        ],
    )


def freeze_start_up() -> None:
    """Leave what start-up made out of every later full garbage collection.

    Modules, pydantic's schemas and the SDK's tables live as long as the process, yet each
    full collection walks them again, with every thread stopped: in the bench's click figure
    a full collection of the worker paused it 75-87 ms, 24-41 ms once they were frozen
    (bench/README.md). Only objects alive now are frozen; cycles made later are collected as
    before.
    """
    gc.collect()
    gc.freeze()


async def run(settings: Settings | None = None) -> None:
    """Run until SIGINT/SIGTERM, then let in-flight activities finish (bounded) and stop."""
    settings = settings or load_settings()
    config = ConfigStore(os.environ.get("ROLECALL_CONFIG") or settings.config)
    # Metrics: the SDK's and rolecall's, from every client and worker built on this runtime.
    runtime = prometheus_runtime(settings.metrics_bind) if settings.metrics_bind else None
    client = await connect(settings, runtime=runtime)
    slack_client = None
    if os.environ.get("SLACK_BOT_TOKEN"):
        from rolecall.slack_client import web_client

        slack_client = web_client(
            os.environ["SLACK_BOT_TOKEN"],
            base_url=os.environ.get("SLACK_API_URL") or None,
            rate_limit_retries=0,
        )
        log.info("notifications go to Slack")
    identity = None
    if slack_client is not None:
        identity = SlackIdentity(slack_client, settings.slack_team_id, settings.slack_enterprise_id)
    in_flight = InFlight()
    worker = build_worker(
        client,
        config,
        settings.task_queue,
        slack_client=slack_client,
        slack_identity=identity,
        graceful_shutdown=settings.graceful_shutdown,
        decision_key=settings.decision_key_bytes,
        interceptors=[in_flight],
        max_cached_workflows=settings.max_cached_workflows,
        workflow_sandbox=settings.workflow_sandbox,
        sticky_timeout=settings.sticky_timeout,
    )
    await ensure_reconcile_schedules(client, config.get(), settings.task_queue)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    slack_session = contextlib.AsyncExitStack()
    if slack_client is not None:
        from rolecall.slack_client import kept_alive

        await slack_session.enter_async_context(kept_alive(slack_client))
    async with slack_session, worker, asyncio.TaskGroup() as background:
        freeze_start_up()
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
        stopping_since = time.monotonic()
        in_flight.stopping = True
        log.info(
            "worker stopping: no new tasks; waiting up to %s for %s",
            format_duration(settings.graceful_shutdown),
            in_flight.describe(),
        )
        if runtime is not None:
            reporter.cancel()
    await close_idle()  # the activities' reused database connections
    log.info(
        "worker stopped after %.1fs: %s",
        time.monotonic() - stopping_since,
        _ended(in_flight.ended, settings.graceful_shutdown),
    )


def _ended(ended: Counter[str], limit: timedelta) -> str:
    if not ended:
        return "no activity was running"
    parts = [f"{ended['finished']} finished"] if ended["finished"] else []
    if ended["failed"]:
        parts.append(f"{ended['failed']} failed")
    if ended["cut"]:
        parts.append(
            f"{ended['cut']} cancelled at the {format_duration(limit)} limit (Temporal retries them)"
        )
    return ", ".join(parts)


def main() -> int:
    setup_logging()
    try:
        asyncio.run(run())
    except ConfigError as e:
        print(f"rolecall: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
