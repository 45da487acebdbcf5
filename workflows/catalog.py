"""Role lists for the Slack modal, read on the worker side: the Slack app holds no DSN.

One long-lived workflow per instance keeps the instance's requestable roles (globs expanded)
and answers the `roles` query; an activity refreshes them every minute, or at once on the
`refresh` signal. It continues as new now and then so its history stays short.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.postgres import PostgresActivities
    from rolecall.models import CatalogInput, RoleList
    from workflows.access_request import failure_reason

_ROUNDS_BEFORE_CONTINUE = 100


@workflow.defn
class CatalogWorkflow:
    @workflow.init
    def __init__(self, inp: CatalogInput) -> None:
        self._roles = RoleList()
        self._refresh = False

    @workflow.run
    async def run(self, inp: CatalogInput) -> None:
        for _ in range(_ROUNDS_BEFORE_CONTINUE):
            try:
                found = await workflow.execute_activity_method(
                    PostgresActivities.list_requestable_roles,
                    inp,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_attempts=2),
                )
                self._roles = found
            except ActivityError as e:
                # Keep the last good list; say why it may be stale.
                self._roles = self._roles.model_copy(update={"error": failure_reason(e)[0]})
            self._refresh = False
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(lambda: self._refresh, timeout=inp.refresh)
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(inp)

    @workflow.query
    def roles(self) -> RoleList:
        return self._roles

    @workflow.signal
    def refresh(self) -> None:
        self._refresh = True
