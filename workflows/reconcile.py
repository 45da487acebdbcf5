"""The safety net: find memberships rolecall granted that no open request stands behind.

Run per instance by a Temporal Schedule (and on demand by `rolecall reconcile`). Orphans are
revoked with the same activity as a normal revoke; memberships granted outside rolecall are
reported and never touched.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.notify import NotifyActivities
    from activities.postgres import PostgresActivities
    from activities.temporal import TemporalActivities
    from rolecall.errors import NON_RETRYABLE
    from rolecall.models import ReconcileInput, ReconcileReport, RevokeInput
    from workflows.access_request import failure_reason

_RETRY = RetryPolicy(maximum_attempts=3, non_retryable_error_types=NON_RETRYABLE)


@workflow.defn
class ReconcileWorkflow:
    @workflow.run
    async def run(self, inp: ReconcileInput) -> ReconcileReport:
        # Memberships first, open requests second: a grant made in between is then always
        # seen as open, never as an orphan.
        members = await workflow.execute_activity_method(
            PostgresActivities.list_memberships,
            inp,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=_RETRY,
        )
        open_grants = await workflow.execute_activity_method(
            TemporalActivities.open_grants,
            inp,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=_RETRY,
        )
        protected = {tuple(p) for p in open_grants.pairs}
        report = ReconcileReport(
            instance=inp.instance,
            dry_run=inp.dry_run,
            channel=members.channel,
            orphans=[m for m in members.ours if (m.role, m.member) not in protected],
            foreign=members.foreign,
        )
        if not inp.dry_run:
            for m in report.orphans:
                try:
                    await workflow.execute_activity_method(
                        PostgresActivities.revoke_role,
                        RevokeInput(
                            request_id=f"reconcile/{inp.instance}",
                            instance=inp.instance,
                            role=m.role,
                            db_user=m.member,
                            terminate_sessions=members.terminate_sessions,
                        ),
                        start_to_close_timeout=timedelta(seconds=60),
                        retry_policy=RetryPolicy(maximum_attempts=5),
                    )
                    report.revoked.append(m)
                except ActivityError as e:
                    report.errors.append(f"revoke {m.role} from {m.member}: {failure_reason(e)[0]}")
        if report.orphans or report.errors:
            workflow.set_current_details(report.summary())
            try:
                await workflow.execute_activity_method(
                    NotifyActivities.report,
                    report,
                    start_to_close_timeout=timedelta(seconds=30),
                    schedule_to_close_timeout=timedelta(minutes=5),
                )
            except ActivityError as e:
                workflow.logger.warning("reconcile report not delivered: %s", e)
        return report
