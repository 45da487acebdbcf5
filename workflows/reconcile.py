"""The safety net: revoke grants whose requests never proved their revoke; report the rest.

Run per instance by a Temporal Schedule (and on demand by `rolecall reconcile`). It revokes a
membership only with two proofs: the ledger (a request that granted this role to this login
is past its expiry plus the grace period without a verified revoke) and the membership row's
grantor (rolecall's). Everything else, whoever granted it, is reported and never touched.
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
    from rolecall.models import Membership, ReconcileInput, ReconcileReport, RevokeInput, StrandedGrant
    from workflows.access_request import failure_reason

_RETRY = RetryPolicy(maximum_attempts=3, non_retryable_error_types=NON_RETRYABLE)


@workflow.defn
class ReconcileWorkflow:
    @workflow.run
    async def run(self, inp: ReconcileInput) -> ReconcileReport:
        # Memberships first, the ledger second: a grant made in between is then always in the
        # ledger, never reported as one without a request behind it.
        members = await workflow.execute_activity_method(
            PostgresActivities.list_memberships,
            inp,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=_RETRY,
        )
        ledger = await workflow.execute_activity_method(
            TemporalActivities.ledger,
            inp,
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
        )
        protected = {tuple(p) for p in ledger.protected}
        stranded = [g for g in ledger.stranded if (g.role, g.login) not in protected]
        accounted = protected | {(g.role, g.login) for g in stranded}
        held = {(m.role, m.member): m for m in members.ours}
        if members.configured:
            # Only what is still held needs action; the rest of the ledger is history.
            stranded = [g for g in stranded if (g.role, g.login) in held]
        report = ReconcileReport(
            instance=inp.instance,
            dry_run=inp.dry_run,
            channel=members.channel or next((g.channel for g in stranded if g.channel), None),
            stranded=stranded,
            unproven=[m for m in members.ours if (m.role, m.member) not in accounted],
            foreign=members.foreign,
        )
        if not inp.dry_run:
            for g in stranded:
                await self._revoke(inp, g, report, held.get((g.role, g.login)))
        if report.alarming or report.unproven:
            workflow.set_current_details(report.summary())
        if report.alarming:
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

    async def _revoke(
        self, inp: ReconcileInput, g: StrandedGrant, report: ReconcileReport, row: Membership | None
    ) -> None:
        """The workflow's own revoke activity, verification included, on rolecall's row only."""
        try:
            result = await workflow.execute_activity_method(
                PostgresActivities.revoke_role,
                RevokeInput(
                    request_id=g.request_id,
                    instance=inp.instance,
                    role=g.role,
                    db_user=g.login,
                    terminate_sessions=g.terminate_sessions,
                    target=g.target,
                    require_ours=True,
                    row_xmin=g.row_xmin,
                ),
                start_to_close_timeout=timedelta(seconds=60),
                heartbeat_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=5),
            )
        except ActivityError as e:
            report.errors.append(f"revoke {g.role} from {g.login}: {failure_reason(e)[0]}")
            return
        if result.revoked:
            report.revoked.append(g)
        elif g.row_xmin is not None:
            # The row rolecall made is gone; this one was made since (by hand): not ours.
            report.unproven.append(row or Membership(role=g.role, member=g.login, grantor="?"))
        else:
            report.errors.append(
                f"{g.role} held by {g.login}: request {g.request_id} ({g.execution}) expired at "
                f"{g.expires_at:%Y-%m-%d %H:%M} UTC, but its grant's answer was never recorded, so "
                "rolecall cannot prove the membership is its own: left alone, check it by hand"
            )
