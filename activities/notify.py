"""Tell people what happened: Slack when it is configured, the log otherwise.

Notifications run beside the lifecycle, never in its way: the workflow does not await them
before a grant or a revoke, and a failing one is retried, then dropped with a warning.
"""

from __future__ import annotations

import logging
from typing import Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from rolecall.durations import format_duration
from rolecall.models import (
    ApproverGroups,
    Approvers,
    GroupCheck,
    GroupMembership,
    Notification,
    NotifyResult,
    ReconcileReport,
)

log = logging.getLogger("rolecall.notify")


class Notifier(Protocol):
    async def send(self, note: Notification) -> NotifyResult: ...

    async def report(self, report: ReconcileReport) -> None: ...


def describe(note: Notification) -> str:
    """One log line per event, with everything an operator needs to act on it."""
    s = note.status
    what = f"{s.requester} -> {s.role!r} on {s.instance!r}"
    if note.event == "requested":
        dur = format_duration(s.duration or s.requested_duration)
        return f"request {s.id}: {what} for {dur}, waiting for {', '.join(s.approvers)}"
    if note.event == "granted":
        return f"request {s.id}: granted {what} as {s.db_user}, expires {s.expires_at}"
    if note.event in ("denied", "cancelled"):
        reason = f" ({s.decision_reason})" if s.decision_reason else ""
        return f"request {s.id}: {note.event} by {s.decided_by}{reason}"
    if note.event in ("rejected", "failed"):
        return f"request {s.id}: {note.event}: {s.error}"
    if note.event == "refused":
        return f"request {s.id}: a decision did not count ({note.detail})"
    if note.event == "revoke_failing":
        return f"request {s.id}: ALERT revoke of {what} keeps failing: {note.detail}"
    return f"request {s.id}: {note.event} {what}"


class LogNotifier:
    async def send(self, note: Notification) -> NotifyResult:
        level = logging.WARNING if note.event == "revoke_failing" else logging.INFO
        log.log(level, describe(note), extra={"request_id": note.status.id})
        return NotifyResult()

    async def report(self, report: ReconcileReport) -> None:
        log.warning(report.summary(), extra={"request_id": f"reconcile/{report.instance}"})


class NotifyActivities:
    def __init__(self, notifier: Notifier | None = None) -> None:
        self._notifier: Notifier = notifier or LogNotifier()

    @activity.defn(name="notify")
    async def notify(self, note: Notification) -> NotifyResult:
        return await self._notifier.send(note)

    @activity.defn(name="report_reconcile")
    async def report(self, report: ReconcileReport) -> None:
        """Tell the approvers what the reconciler found and did."""
        await self._notifier.report(report)


@activity.defn(name="still_in_groups")
async def no_group_membership(inp: GroupCheck) -> GroupMembership:
    """Without Slack there are no group approvers to check (none could have been expanded)."""
    return GroupMembership(member=False, detail="approver groups need Slack, which is not configured")


@activity.defn(name="expand_approver_groups")
async def no_approver_groups(inp: ApproverGroups) -> Approvers:
    """Without Slack, group approvers cannot be looked up: say so instead of guessing."""
    raise ApplicationError(
        f"approver groups {', '.join(inp.groups)} need Slack, which is not configured",
        type="ConfigError",
        non_retryable=True,
    )
