"""One durable workflow per access request: check, decide, grant, wait, revoke.

Deterministic: all I/O (config, database, Slack, PagerDuty) happens in activities. The check
activity returns the policy snapshot the workflow enforces, so the history shows the rules
that applied. Notifications run in a background chain and never delay a grant or a revoke.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal, NoReturn

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError
from temporalio.workflow import ActivityCancellationType

from workflows.patches import Patches

with workflow.unsafe.imports_passed_through():
    from activities.decisions import DecisionActivities
    from activities.notify import NotifyActivities
    from activities.pagerduty import PagerDutyActivities
    from activities.postgres import PostgresActivities
    from rolecall import contract
    from rolecall.durations import format_duration
    from rolecall.errors import NON_RETRYABLE, RolecallError
    from rolecall.metrics import observe
    from rolecall.models import (
        AccessRequest,
        AppliedRule,
        Approval,
        ApproverGroups,
        Approvers,
        DecideAnswer,
        DecideRequest,
        Decision,
        ExtendAnswer,
        ExtendRequest,
        Extension,
        GrantInput,
        GrantResult,
        GroupCheck,
        GroupMembership,
        HeldGrant,
        MessageRef,
        Notification,
        NotificationEvent,
        OnCallCheck,
        OnCallResult,
        Origin,
        Policy,
        PrepareResult,
        PrivilegesSnapshot,
        RefusedSignal,
        RequestState,
        RequestStatus,
        RevokeInput,
        RevokeResult,
        VerifyDecision,
    )
    from rolecall.policy import SIGNALS, claimed_origin, label, refusal
    from rolecall.rules import check_reason
    from rolecall.temporal import (
        APPROVERS,
        AUTO_APPROVED,
        BREAK_GLASS,
        EXPIRES_AT,
        INSTANCE,
        LOGIN,
        REQUESTER,
        ROLE,
        RULE,
        STATE,
    )

DecisionKind = Literal["approve", "deny", "cancel"]

_CHECK_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10), non_retryable_error_types=NON_RETRYABLE)
_NOTIFY_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=60))
# A burst of 300 requests to one channel drains in ~20 minutes at Slack's ~1 message/s
# (bench/README.md, the burst figure): a notification waits up to an hour before it is dropped.
_NOTIFY_WITHIN = timedelta(hours=1)
# Revoke is sacred: it is never given up. Attempts are only counted to know when to alert.
# Database activities heartbeat every few seconds: a worker that dies mid-grant or mid-revoke
# is noticed after this, not after the whole start-to-close timeout.
_DB_HEARTBEAT = timedelta(seconds=10)
# Read-only steps run locally first: two quick attempts, then the regular activity.
_LOCAL_READ_TIMEOUT = timedelta(seconds=10)
_LOCAL_READ_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_attempts=2, non_retryable_error_types=NON_RETRYABLE
)
# An expiry whose task started this late is in a burst: it indexes and tells after waiting
# about twice as long, at most 1.5 x _BURST_TAIL_MAX (`_after_the_burst`).
_BURST_LATENESS = timedelta(seconds=2)
_BURST_TAIL_MAX = timedelta(seconds=20)
_REVOKE_FIRST_RETRY = timedelta(seconds=1)
_REVOKE_MAX_BACKOFF = timedelta(seconds=30)
_REVOKE_PAUSE_AFTER_NON_RETRYABLE = timedelta(seconds=60)
# A grant held this long, with nothing else under way, continues in a fresh run (HeldGrant):
# long enough that a grant relinquished within seconds never pays for a new run, short enough
# that few requests are in their first, larger run at once (bench/README.md, 2026-12-02).
_CONTINUE_AFTER = timedelta(seconds=15)


def failure_reason(err: BaseException) -> tuple[str, str | None]:
    """The human message and the rolecall error type of an activity failure."""
    cause: BaseException | None = err
    while isinstance(cause, ActivityError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, ApplicationError):
        return cause.message, cause.type
    if isinstance(cause, TimeoutError):
        return "timed out (is the database reachable?)", "Timeout"
    return str(cause), None


def _error_details(err: BaseException) -> list[Any]:
    """The details an activity's ApplicationError carried (decoded as plain JSON)."""
    cause: BaseException | None = err
    while isinstance(cause, ActivityError) and cause.cause is not None:
        cause = cause.cause
    return list(cause.details) if isinstance(cause, ApplicationError) else []


def _as_activity_error(err: BaseException, method: Callable[..., Any]) -> ActivityError:
    """A local activity's failure arrives bare; wrapped as a regular activity's is, so every
    caller reads both the same way (failure_reason, _cancelled)."""
    if isinstance(err, ActivityError):
        return err
    wrapped = ActivityError(
        str(err),
        scheduled_event_id=0,
        started_event_id=0,
        identity="",
        activity_type=getattr(method, "__name__", "local"),
        activity_id="",
        retry_state=None,
    )
    wrapped.__cause__ = err
    return wrapped


def _cancelled(err: ActivityError) -> bool:
    return isinstance(err.cause, CancelledError)


@workflow.defn
class AccessRequestWorkflow:
    @workflow.init
    def __init__(self, req: AccessRequest) -> None:
        self._req = req
        self._status = RequestStatus(
            id=workflow.info().workflow_id,
            state=RequestState.PENDING,
            requester=req.requester.lower(),
            requester_name=req.requester_name,
            instance=req.instance,
            role=req.role,
            reason=req.reason,
            source=req.source,
            slack_user_id=req.slack_user_id,
            requested_duration=req.duration,
            requested_at=workflow.now(),
        )
        self._policy: Policy | None = None
        self._checked = False
        self._decision: DecisionKind | None = None
        self._relinquished: Decision | None = None
        self._messages: dict[str, MessageRef] = {}
        self._notify_tail: asyncio.Task[None] | None = None
        self._observed: set[str] = set()  # metrics already recorded (rolecall.metrics)
        # The ledger (RolecallExpiresAt): until when rolecall may hold a grant for this request.
        # Set before the first GRANT can run, removed once the revoke is proven or no grant
        # happened; the reconciler revokes what stays past it.
        self._held_until: datetime | None = None
        self._decisions = asyncio.Lock()  # decisions are settled one at a time
        self._signatures: set[str] = set()  # each signed decision counts once
        self._settling = 0  # decisions received, not yet counted or refused
        self._review_task: asyncio.Task[None] | None = None
        self._nag_task: asyncio.Task[None] | None = None
        self._group_approvers: set[str] = set()  # approvers only through an approver group
        self._unindexed = False  # the state is newer than visibility's (see _set_state)
        self._patches = Patches()
        self._granted: GrantResult | None = None
        self._may_continue = False  # held past _CONTINUE_AFTER: continue once nothing is under way

    # ---- lifecycle -----------------------------------------------------------------------

    @workflow.run
    async def run(self, req: AccessRequest) -> RequestStatus:
        if req.held is not None:
            return await self._resume(req.held)
        s = self._status
        self._set_state(RequestState.PENDING, "checking the request")
        try:
            check = await self._database_read(
                PostgresActivities.check_request,
                req,
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=timedelta(minutes=2),
                retry_policy=_CHECK_RETRY,
            )
        except ActivityError as e:
            s.error, s.error_type = failure_reason(e)
            self._checked = True
            return await self._finish(RequestState.REJECTED, "rejected")

        policy = self._policy = check.policy
        s.warnings = check.warnings
        if policy.approver_groups:
            policy.approvers = await self._expand_groups(policy)
        s.db_user = check.db_user
        s.duration = check.duration
        s.approvers = policy.approvers
        s.approver_channel = policy.slack_channel
        s.allow_self_approval = policy.allow_self_approval
        s.accept_unverified_decisions = policy.accept_unverified_decisions
        if policy.privileges is not None:
            s.privileges_summary = policy.privileges.summary
            s.privileges_detail = policy.privileges.detail
        if policy.rule is not None:
            s.rule = policy.rule.name
            s.approvals_required = policy.rule.approvals_required
            s.break_glass = req.break_glass and policy.rule.break_glass
        self._checked = True

        if s.break_glass:
            self._break_glass(policy, check.duration)
        elif policy.rule is not None and policy.rule.auto_approve == "always":
            s.on_call_detail = f"rule {policy.rule.name} approves {s.role} automatically"
            self._auto_approve(policy, check.duration, "rule")
        elif (oncall := await self._check_oncall(policy)).on_call and not (
            # A person who decided while PagerDuty was being asked wins over the auto-approval.
            self._decision is not None and self._patches.on("decision-during-oncall-wins")
        ):
            s.on_call_detail = oncall.detail
            self._auto_approve(policy, check.duration)
        else:
            s.on_call_detail = oncall.detail
            if oncall.on_call:
                s.on_call_detail = f"{oncall.detail} (not used: {s.decided_by} decided first)"
            self._set_state(RequestState.PENDING, "waiting for an approver")
            self._notify("requested")
            rule = policy.rule
            if rule is not None and (rule.remind_after or rule.escalate_after):
                self._nag_task = asyncio.create_task(
                    self._nag(lambda: self._decision is None, workflow.now())
                )
            if not await self._wait_for_decision(policy):
                s.error = f"no approver decided within {format_duration(policy.approval_timeout)}"
                return await self._finish(RequestState.TIMED_OUT, "timed_out")

        if (ended := await self._ended_by_decision()) is not None:
            return ended
        if not s.auto_approved:
            self._may_hold(policy)
            self._set_state(RequestState.APPROVED, f"approved by {s.decided_by}, granting")
        if s.auto_approved or not self._patches.on("approval-told-with-grant"):
            # A person's approval is told with the grant (or its failure) a moment later;
            # an auto-approval is the approvers' first news of the request, so it is told now.
            self._notify("approved")
        return await self._grant_then_revoke(policy)

    async def _grant_then_revoke(self, policy: Policy) -> RequestStatus:
        granted = await self._grant(policy)
        if isinstance(granted, RequestStatus):
            return granted
        self._granted = granted
        return await self._hold_then_revoke(policy, granted.owned)

    async def _grant(self, policy: Policy) -> GrantResult | RequestStatus:
        """The grant, or the finished request when it failed or was cancelled meanwhile.

        Both activities wait for their cancellation to complete, and the grant activity lets
        a GRANT in flight finish first: a revoke after a cancel can never run before a late
        GRANT commits. When the role gained privileges since the approvers saw it, nothing
        is granted and they are asked again (`_approve_again`); then the grant runs again.
        """
        s = self._status
        assert s.db_user is not None and s.duration is not None
        options: dict[str, Any] = {
            "heartbeat_timeout": _DB_HEARTBEAT,
            "start_to_close_timeout": timedelta(seconds=30),
            "schedule_to_close_timeout": policy.grant_timeout,
            "retry_policy": RetryPolicy(
                maximum_interval=timedelta(seconds=15), non_retryable_error_types=NON_RETRYABLE
            ),
            "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        }
        while True:
            grant = GrantInput(
                request_id=s.id,
                instance=s.instance,
                role=s.role,
                db_user=s.db_user,
                target=policy.target,
                privileges=policy.privileges,
            )
            grant_attempted = False
            try:
                prep: PrepareResult = await self._database_read(
                    PostgresActivities.prepare_grant, grant, **options
                )
                s.pre_existing = prep.pre_existing
                if prep.pre_existing:
                    self._held_until = None  # rolecall grants nothing, so holds nothing
                    return GrantResult(granted=False, owned=[])
                grant_attempted = True
                granted: GrantResult = await workflow.execute_activity_method(
                    PostgresActivities.grant_role, grant, **options
                )
                s.warnings = [*s.warnings, *(w for w in granted.warnings if w not in s.warnings)]
                return granted
            except ActivityError as e:
                if _cancelled(e) and self._patches.on("cancel-during-grant-revokes"):
                    return await self._cancelled_while_granting(policy, grant_attempted)
                reason, kind = failure_reason(e)
                if kind == "PrivilegesChanged" and self._patches.on("privileges-drift"):
                    finished = await self._approve_again(policy, reason, _error_details(e))
                    if finished is not None:
                        return finished
                    continue
                s.error, s.error_type = f"grant failed: {reason}", kind
                if grant_attempted and kind not in ("GrantFailed", "PrivilegesChanged"):
                    # A GRANT may have committed before its answer was lost: the requester is
                    # told now, and the workflow stays open until a revoke has made sure
                    # nothing stays.
                    self._set_state(RequestState.FAILED, f"{s.error}; making sure nothing stays")
                    self._notify("failed")
                    await self._revoke(policy, None)
                    s.revoked_at = workflow.now()
                    self._held_until = None
                    return await self._finish(RequestState.FAILED, None)
                self._held_until = None
                return await self._finish(RequestState.FAILED, "failed")

    async def _database_read(self, method: Callable[..., Any], arg: Any, **options: Any) -> Any:
        """Run a read-only database step (the check, or the look before the GRANT) locally first.

        A local activity runs inside the workflow task that asked for it and is recorded as a
        marker when that task completes: no activity task to dispatch, start and complete,
        and no extra workflow task after it (bench/README.md, "Levers"). Only reads qualify:
        if the worker dies before the task completes, the read simply runs again. It gets
        two quick attempts; a database that stays unreachable is then retried by the regular
        activity, whose timeouts the server enforces and whose heartbeats notice a dead
        worker (a local activity's retries would hold the workflow task instead). The GRANT
        and the REVOKE stay regular activities: a GRANT must be recorded as scheduled before
        it runs, and a REVOKE must retry for as long as it takes.
        """
        if not self._patches.on("local-database-reads"):
            return await workflow.execute_activity_method(method, arg, **options)
        try:
            return await workflow.execute_local_activity_method(
                method,
                arg,
                start_to_close_timeout=_LOCAL_READ_TIMEOUT,
                retry_policy=_LOCAL_READ_RETRY,
            )
        except (ActivityError, ApplicationError, TimeoutError, CancelledError) as e:
            cause = e.cause if isinstance(e, ActivityError) else e
            final = isinstance(cause, CancelledError) or (
                isinstance(cause, ApplicationError) and (cause.non_retryable or cause.type in NON_RETRYABLE)
            )
            if final:
                raise _as_activity_error(e, method) from e
            workflow.logger.info("%s: local attempts failed (%s), retrying as an activity", method, cause)
        return await workflow.execute_activity_method(method, arg, **options)

    async def _approve_again(self, policy: Policy, why: str, details: list[Any]) -> RequestStatus | None:
        """The role gained privileges before the grant (none was made): ask the approvers again.

        Their approvals were for what the card showed, so they are cleared and the request
        waits for new ones as it did the first time (the full approval timeout). The new
        snapshot the grant read becomes the card's line and the next grant's baseline.
        Returns the finished request when it ends without a new approval, else None.
        """
        s = self._status
        if details and isinstance(details[0], dict):
            policy.privileges = PrivilegesSnapshot.model_validate(details[0])
            s.privileges_summary = policy.privileges.summary
            s.privileges_detail = policy.privileges.detail
        s.warnings = [*s.warnings, f"grant held: {why}"]
        s.approvals = []
        s.decided_by, s.decided_at, s.decided_via, s.decision_reason = None, None, "", ""
        self._decision = None
        self._held_until = None  # the grant refused before its GRANT: nothing is held
        self._set_state(RequestState.PENDING, "the role gained privileges: waiting for a new approval")
        self._notify("privileges_changed", why)
        if not await self._wait_for_decision(policy):
            s.error = f"no approver decided within {format_duration(policy.approval_timeout)}"
            return await self._finish(RequestState.TIMED_OUT, "timed_out")
        if (ended := await self._ended_by_decision()) is not None:
            return ended
        self._may_hold(policy)
        self._set_state(RequestState.APPROVED, f"approved again by {s.decided_by}, granting")
        return None

    async def _cancelled_while_granting(self, policy: Policy, grant_attempted: bool) -> RequestStatus:
        s = self._status
        s.decision_reason = "workflow cancelled by an operator while granting"
        if grant_attempted:
            # The grant activity has finished (its GRANT committed or never will): revoke now.
            self._set_state(RequestState.REVOKING, "cancelled while granting, revoking")
            await self._revoke(policy, None)
            s.revoked_at = workflow.now()
        self._held_until = None
        return await self._finish(RequestState.CANCELLED, "cancelled")

    async def _hold_then_revoke(self, policy: Policy, owned: list[str] | None) -> RequestStatus:
        s = self._status
        assert s.duration is not None
        if s.pre_existing:
            owned = None
        s.granted_at = workflow.now()
        s.expires_at = s.granted_at + s.duration
        if self._held_until is not None:
            self._held_until = s.expires_at
        self._set_state(RequestState.GRANTED, f"granted until {s.expires_at:%Y-%m-%d %H:%M:%S} UTC")
        self._notify("granted")
        continue_at = s.granted_at + _CONTINUE_AFTER if self._patches.on("held-grant-continues") else None
        return await self._held(policy, owned, continue_at)

    async def _held(
        self, policy: Policy, owned: list[str] | None, continue_at: datetime | None
    ) -> RequestStatus:
        """Wait for the expiry or relinquish, then revoke; or continue in a fresh run (HeldGrant)."""
        s = self._status
        final = RequestState.EXPIRED
        try:
            if self._patches.on("day-two"):
                final = await self._until_expiry(policy, continue_at)
                if final == RequestState.GRANTED:
                    self._continue(policy, owned)
            else:
                await workflow.wait_condition(
                    lambda: self._relinquished is not None,
                    timeout=s.duration,
                    timeout_summary="grant expiry",
                )
                final = RequestState.RELINQUISHED
        except builtins.TimeoutError:
            pass
        except asyncio.CancelledError:
            # Cancelled from the Temporal UI or CLI: treat it as relinquished by an operator.
            s.decision_reason = "workflow cancelled by an operator"
            final = RequestState.RELINQUISHED
        self._close_pending_extension("relinquished" if final == RequestState.RELINQUISHED else "expired")
        # "revoking" reaches visibility only when the revoke keeps failing, with the approvers'
        # alert (`_revoke`): an upsert costs the server more than the REVOKE's activity, and
        # 1,000 grants ending in the same second queued every REVOKE behind theirs
        # (bench/README.md, "Levers (2026-12-03)").
        quiet = self._patches.on("revoking-indexed-when-failing")
        self._set_state(RequestState.REVOKING, f"{label(final)}, revoking", index=not quiet)
        woken = workflow.now()
        result = await self._revoke(policy, owned)
        s.revoked_at = workflow.now()
        self._held_until = None
        if result.note:
            s.warnings = [*s.warnings, result.note]
        if result.new_objects:
            s.new_objects = result.new_objects
            s.warnings = [
                *s.warnings,
                f"role {s.role!r} came to own objects while it was lent (not dropped): "
                + ", ".join(result.new_objects[:5])
                + (f" and {len(result.new_objects) - 5} more" if len(result.new_objects) > 5 else ""),
            ]
        event: NotificationEvent = "expired" if final == RequestState.EXPIRED else "relinquished"
        if final == RequestState.EXPIRED and self._patches.on("burst-tail-after-revokes"):
            await self._after_the_burst(final, woken)
        return await self._finish(final, event)

    async def _after_the_burst(self, final: RequestState, woken: datetime) -> None:
        """In a burst of expiries, index and tell after the burst's REVOKEs, not among them.

        An expiry whose workflow task started seconds after its `expires_at` is queued behind
        others: on a server that is busy, every task it asks for now (the upsert, the
        notification's activity, the task that reads its result) delays the REVOKEs still
        waiting. 1,000 expiries in one second then took twice the engine floor and more, and
        tasks waiting past the sticky timeout were replayed, which lengthened the queue
        further (bench/README.md, "Burst tail"). So such a request, its REVOKE done and
        verified, waits a little (about twice its lateness, jittered, at most 30 s) before
        it says so in visibility and Slack. Its status says it at once; the reconciler looks
        only past expiry plus its grace period (10 minutes by default).
        """
        s = self._status
        assert s.expires_at is not None
        late = woken - s.expires_at
        if late <= _BURST_LATENESS:
            return
        base = min(late * 2, _BURST_TAIL_MAX)
        delay = base + min(late, _BURST_TAIL_MAX / 2) * workflow.random().random()
        self._set_state(
            final, f"{label(final)}; telling in {format_duration(delay)} (a burst of expiries)", index=False
        )
        await workflow.sleep(delay, summary="after a burst of expiries")

    async def _until_expiry(self, policy: Policy, continue_at: datetime | None = None) -> RequestState:
        """Wait for relinquish or the expiry, which an extension may move; warn once per expiry.

        The expiry timer fires first when an extension is approved in the same task: the
        grant ends as it was due to, and the extension is closed as expired (tested).
        GRANTED: held past `continue_at` with nothing under way, the grant continues in a
        fresh run. That moment shares the expiry's timer (the earlier of the two), so a
        grant that ends before it costs no command more.
        """
        s = self._status
        assert s.expires_at is not None and s.duration is not None
        warning = policy.rule.expiry_warning if policy.rule else timedelta(0)
        if s.duration < 2 * warning:
            warning = timedelta(0)  # a grant shorter than twice the warning gets none
        while True:
            expires: datetime = s.expires_at
            now = workflow.now()
            if expires <= now:
                return RequestState.EXPIRED
            warn_at = expires - warning if warning and s.expiry_warned_for != expires else None
            if warn_at is not None and warn_at <= now:
                warn_at = None
            if continue_at is not None and continue_at <= now:
                self._may_continue, continue_at = True, None
            if self._may_continue and self._quiet():
                return RequestState.GRANTED
            wake, summary = warn_at or expires, "expiry warning" if warn_at else "grant expiry"
            checkpoint = continue_at is not None and continue_at < wake
            if checkpoint and continue_at is not None:
                wake, summary = continue_at, "continue in a fresh run"
            try:
                await workflow.wait_condition(
                    lambda e=expires: (
                        self._relinquished is not None  # type: ignore[misc]
                        or s.expires_at != e
                        or (self._may_continue and self._quiet())
                    ),
                    timeout=wake - now,
                    timeout_summary=summary,
                )
            except builtins.TimeoutError:
                if checkpoint:
                    continue  # continue_at has passed: the loop marks it
                if warn_at is None:
                    return RequestState.EXPIRED
                s.expiry_warned_for = expires
                self._notify("expiring")
                continue
            if self._relinquished is not None:
                return RequestState.RELINQUISHED

    def _quiet(self) -> bool:
        """Nothing is under way that a fresh run would not carry: a notification, a review,
        a pending extension, a decision being settled, or a handler still running."""
        return (
            self._relinquished is None
            and (self._notify_tail is None or self._notify_tail.done())
            and (self._review_task is None or self._review_task.done())
            and (self._nag_task is None or self._nag_task.done())
            and self._pending_extension() is None
            and self._settling == 0
            and workflow.all_handlers_finished()
        )

    def _continue(self, policy: Policy, owned: list[str] | None) -> NoReturn:
        """Carry the held grant into a fresh run of this workflow ID (HeldGrant says why).

        The ledger moves with it: the new run starts with RolecallExpiresAt set, and this run
        closes without it, so the reconciler never takes the closed run for a stranded grant.
        """
        s = self._status
        assert self._granted is not None
        held = HeldGrant(
            status=s,
            # The role's privileges snapshot served the approval and the grant; the card keeps
            # its lines in the status. Not carried: for a role with many grants it is large.
            policy=policy.model_copy(update={"privileges": None}),
            grant=self._granted,
            owned=owned,
            held_until=self._held_until,
            messages=dict(self._messages),
            signatures=sorted(self._signatures),
            group_approvers=sorted(self._group_approvers),
            observed=sorted(self._observed),
            folded=self._patches.fold(),
        )
        attributes = TypedSearchAttributes(list(workflow.info().typed_search_attributes))
        if self._held_until is not None:
            workflow.upsert_search_attributes([EXPIRES_AT.value_unset()])
        workflow.continue_as_new(
            self._req.model_copy(update={"held": held}),
            search_attributes=attributes,
            memo={contract.REQUESTED_AT: s.requested_at.isoformat()},
        )

    async def _resume(self, held: HeldGrant) -> RequestStatus:
        """The rest of a held grant's lifecycle, in the run it continued into."""
        if workflow.info().continued_run_id is None:
            # Only the request's own run can hand a grant on: a client cannot start one held.
            self._status.error = "a held grant can only continue from its own request's run"
            self._checked = True
            return await self._finish(RequestState.REJECTED, None)
        self._status, self._policy, self._granted = held.status, held.policy, held.grant
        self._messages, self._held_until = dict(held.messages), held.held_until
        self._signatures, self._group_approvers = set(held.signatures), set(held.group_approvers)
        self._observed = set(held.observed)
        self._decision, self._checked = "approve", True
        self._patches.carry(held.folded)
        s = self._status
        assert s.expires_at is not None
        self._set_state(
            RequestState.GRANTED, f"granted until {s.expires_at:%Y-%m-%d %H:%M:%S} UTC (continued run)"
        )
        return await self._held(held.policy, held.owned, None)

    def _close_pending_extension(self, state: Literal["expired", "relinquished"]) -> None:
        """A pending extension ends with its grant (relinquish wins over it)."""
        ext = self._pending_extension()
        if ext is not None:
            ext.state = state

    def _pending_extension(self) -> Extension | None:
        last = self._status.extensions[-1] if self._status.extensions else None
        return last if last is not None and last.state == "pending" else None

    # ---- extensions ------------------------------------------------------------------------

    @workflow.update
    async def extend(self, ask: ExtendRequest) -> ExtendAnswer:
        """The requester asks for more time; approved at once (auto) or by the approvers."""
        async with self._decisions:
            via = await self._origin("extend", ask.decision)
            if via is None:
                raise ApplicationError(self._status.refused[-1].why, type="NotAllowed", non_retryable=True)
            why = self._extension_refusal(ask, via)
            if why:
                self._refuse("extend", ask.decision, why, via)
                raise ApplicationError(why, type="NotAllowed", non_retryable=True)
            s, rule = self._status, self._rule()
            ext = Extension(asked_by=ask.decision.actor.lower(), at=workflow.now(), added=ask.by,
                            reason=ask.decision.reason, via=via)  # fmt: skip
            s.extensions = [*s.extensions, ext]
            if rule.extend_approval == "auto":
                self._apply_extension(ext, "auto", via)
                return ExtendAnswer(
                    state="approved", expires_at=s.expires_at, message=self._extended_line(ext)
                )
            self._notify("extension_requested")
            self._nag_task = asyncio.create_task(self._nag(lambda: self._pending_extension() is ext, ext.at))
            return ExtendAnswer(
                state="pending",
                expires_at=s.expires_at,
                message=f"asked the approvers for {format_duration(ask.by)} more",
            )

    @extend.validator
    def _validate_extend(self, ask: ExtendRequest) -> None:
        why = self._extension_refusal(ask, None)
        if why:
            raise ValueError(why)

    def _rule(self) -> AppliedRule:
        return self._policy.rule if self._policy and self._policy.rule else AppliedRule()

    def _extension_refusal(self, ask: ExtendRequest, via: Origin | None) -> str | None:
        """Why this extension can't be asked for now; the same answer in validator and handler."""
        s, rule = self._status, self._rule()
        actor = ask.decision.actor.strip().lower()
        if via is not None and not s.accept_unverified_decisions and via != "slack (verified)":
            return f"instance {s.instance!r} accepts only decisions made in Slack and verified by rolecall"
        if actor != s.requester:
            return f"only the requester ({s.requester}) can extend this access"
        if s.state != RequestState.GRANTED or s.granted_at is None or s.expires_at is None:
            return f"only granted access can be extended; this request is {label(s.state)}"
        if workflow.now() >= s.expires_at:
            return "this access has already expired"
        if self._relinquished is not None:
            return "this access is being relinquished"
        if ask.by <= timedelta(0):
            return "the extension must be a positive duration"
        if self._pending_extension() is not None:
            return "an extension is already waiting for the approvers"
        try:
            check_reason(rule, ask.decision.reason, False)
        except RolecallError as e:
            return f"extension: {e}"
        done = [e for e in s.extensions if e.state == "approved"]
        if len(done) >= rule.max_extensions:
            return f"this access was already extended {len(done)} times (the most rule {rule.name} allows)"
        cap = rule.max_total_duration or rule.max_duration
        left = s.granted_at + cap - s.expires_at
        if ask.by > left:
            return (
                f"{format_duration(ask.by)} more would pass the {format_duration(cap)} this access may last "
                f"in all; at most {format_duration(left) if left > timedelta(0) else 'nothing'} is left"
            )
        return None

    def _apply_extension(self, ext: Extension, by: str, via: str) -> None:
        """Only the timer moves: the membership stays, nothing is revoked and granted again."""
        s = self._status
        assert s.expires_at is not None
        ext.state, ext.decided_by, ext.decided_at, ext.via = "approved", by, workflow.now(), via
        s.expires_at = s.expires_at + ext.added
        if self._held_until is not None:
            self._held_until = s.expires_at
        self._set_state(RequestState.GRANTED, f"extended until {s.expires_at:%Y-%m-%d %H:%M:%S} UTC")
        self._notify("extended")

    def _extended_line(self, ext: Extension) -> str:
        assert self._status.expires_at is not None
        return f"extended by {format_duration(ext.added)}, until {self._status.expires_at:%Y-%m-%d %H:%M} UTC"

    @workflow.signal
    async def approve_extension(self, d: Decision) -> None:
        await self._receive("approve_extension", d)

    @workflow.signal
    async def deny_extension(self, d: Decision) -> None:
        await self._receive("deny_extension", d)

    def _decide_extension(self, signal: str, d: Decision, via: Origin) -> None:
        s, ext = self._status, self._pending_extension()
        actor = d.actor.lower()
        why = refusal(signal, actor, s, via)
        if why is None and ext is None:
            why = "no extension is waiting for a decision (it may have ended with the grant)"
        if why is None and s.expires_at is not None and workflow.now() >= s.expires_at:
            # Approved in the same moment as the expiry: the expiry wins, the grant ends.
            why = f"too late: the access expired at {s.expires_at:%H:%M:%S} UTC"
        if why is None and ext is not None and any(a.by == actor for a in ext.approvals):
            why = f"you already approved this extension ({len(ext.approvals)} of {s.approvals_required})"
        if why is not None or ext is None:
            self._refuse(signal, d, why or "", via)
            return
        if signal == "deny_extension":
            ext.state, ext.decided_by, ext.decided_at, ext.via = "denied", actor, workflow.now(), via
            self._notify("extension_denied")
            return
        ext.approvals = [*ext.approvals, Approval(by=actor, at=workflow.now(), via=via)]
        if len(ext.approvals) < s.approvals_required:
            self._notify("extension_requested")  # the thread message shows the progress
            return
        self._apply_extension(ext, actor, via)

    # ---- reminders and escalation ----------------------------------------------------------

    async def _nag(self, waiting: Callable[[], bool], since: datetime) -> None:
        """Remind the approvers while something waits for them, and escalate once.

        Runs beside the lifecycle; it only ever notifies, so it can't delay a grant or a revoke.
        """
        rule = self._rule()
        remind, every, escalate = (
            rule.remind_after,
            rule.remind_every or rule.remind_after,
            rule.escalate_after,
        )
        next_remind = since + remind if remind else None
        escalate_at = since + escalate if escalate else None
        while waiting() and (next_remind or escalate_at):
            wake = min(t for t in (next_remind, escalate_at) if t is not None)
            now = workflow.now()
            try:
                await workflow.wait_condition(
                    lambda: not waiting(),
                    timeout=max(wake - now, timedelta(seconds=1)),
                    timeout_summary="remind",
                )
                return
            except builtins.TimeoutError:
                pass
            now = workflow.now()
            if escalate_at is not None and now >= escalate_at:
                escalate_at = None
                self._status.escalated_at = now
                self._escalate()
            if next_remind is not None and now >= next_remind:
                self._status.reminded += 1
                self._notify("reminder", f"waiting for {format_duration(now - since)}")
                next_remind = now + every if every else None

    def _escalate(self) -> None:
        """Post to escalate_to (with working buttons); its emails may decide from then on."""
        s, rule = self._status, self._rule()
        widened = [t.lower() for t in rule.escalate_to if "@" in t and t.lower() not in s.approvers]
        s.approvers = [*s.approvers, *widened]
        self._notify("escalated", ", ".join(rule.escalate_to))

    async def _revoke(self, policy: Policy, owned_at_grant: list[str] | None) -> RevokeResult:
        """Retry until PostgreSQL confirms the access is gone; alert, but never give up."""
        s = self._status
        assert s.db_user is not None
        inp = RevokeInput(
            request_id=s.id,
            instance=s.instance,
            role=s.role,
            db_user=s.db_user,
            terminate_sessions=policy.terminate_sessions,
            pre_existing=s.pre_existing,
            target=policy.target,
            owned_at_grant=owned_at_grant,
        )
        max_attempts = policy.revoke_alert_after
        while True:
            try:
                return await workflow.execute_activity_method(
                    PostgresActivities.revoke_role,
                    inp,
                    heartbeat_timeout=_DB_HEARTBEAT,
                    start_to_close_timeout=timedelta(seconds=60),
                    retry_policy=RetryPolicy(
                        initial_interval=_REVOKE_FIRST_RETRY,
                        maximum_interval=_REVOKE_MAX_BACKOFF,
                        maximum_attempts=max_attempts,
                    ),
                )
            except ActivityError as e:
                reason, _ = failure_reason(e)
                workflow.logger.error("revoke of %s is failing: %s", s.id, reason)
                if self._unindexed:  # now ops look for it: "revoking" in the Temporal UI
                    self._set_state(s.state, f"revoke failing: {reason}")
                self._notify("revoke_failing", reason)
                if max_attempts == 0:
                    await workflow.sleep(_REVOKE_PAUSE_AFTER_NON_RETRYABLE)
                max_attempts = 0

    def _auto_approve(self, policy: Policy, asked: timedelta, by: str = "pagerduty") -> None:
        s = self._status
        s.auto_approved = True
        s.decided_by = by
        s.decided_at = workflow.now()
        s.decision_reason = s.on_call_detail
        self._cap(asked, policy.auto_approve_max, "auto-approved")
        self._decision = "approve"
        self._may_hold(policy)
        self._set_state(RequestState.APPROVED, "auto-approved: requester is on call")

    async def _ended_by_decision(self) -> RequestStatus | None:
        """The finished request when the decision was a deny or a cancel, else None."""
        if self._decision == "deny":
            return await self._finish(RequestState.DENIED, "denied")
        if self._decision == "cancel":
            return await self._finish(RequestState.CANCELLED, "cancelled")
        return None

    def _cap(self, asked: timedelta, limit: timedelta, what: str) -> None:
        """Access granted without a person's approval lasts at most `limit`; say so when it cuts."""
        s = self._status
        if asked > limit:
            s.duration = limit
            s.warnings = [
                *s.warnings,
                f"{what} access is capped at {format_duration(limit)} (asked for {format_duration(asked)})",
            ]

    def _break_glass(self, policy: Policy, asked: timedelta) -> None:
        """Emergency access: granted at once for at most break_glass_max, reviewed afterwards."""
        s, rule = self._status, policy.rule
        assert rule is not None and rule.break_glass_max is not None
        s.decided_by = s.requester
        s.decided_at = workflow.now()
        s.decided_via = "break-glass"
        s.decision_reason = s.reason
        self._cap(asked, rule.break_glass_max, "break-glass")
        self._decision = "approve"
        self._may_hold(policy)
        self._set_state(RequestState.APPROVED, "break-glass: granted at once, to be reviewed")
        self._notify("break_glass")
        self._review_task = asyncio.create_task(self._await_review(rule.review_within))

    async def _await_review(self, within: timedelta) -> None:
        """An unreviewed break-glass grant escalates once: a thread reply and a DM per approver."""
        try:
            await workflow.wait_condition(
                lambda: self._status.reviewed_by is not None, timeout=within, timeout_summary="review due"
            )
        except builtins.TimeoutError:
            self._status.review_escalated_at = workflow.now()
            self._notify("review_overdue")
            await workflow.wait_condition(lambda: self._status.reviewed_by is not None)

    async def _wait_for_decision(self, policy: Policy) -> bool:
        """False when the approval timeout passed with no decision.

        A decision that reaches the workflow in the same task as the timeout wins: the
        approver acted within the deadline as far as anyone could see. Handlers of this task
        run first (sleep(0) yields to them, without a timer), so the result does not depend
        on the order in which the server delivered the two.
        """
        try:
            await workflow.wait_condition(
                lambda: self._decision is not None,
                timeout=policy.approval_timeout,
                timeout_summary="approval timeout",
            )
        except builtins.TimeoutError:
            if not self._patches.on("decision-at-timeout-wins"):
                return False
            await asyncio.sleep(0)  # decisions delivered with the timer start here
            await workflow.wait_condition(lambda: self._settling == 0)  # and are verified
            return self._decision is not None
        return True

    def _may_hold(self, policy: Policy) -> None:
        """From here a GRANT may commit: the ledger holds the latest the grant could end."""
        s = self._status
        assert s.duration is not None
        self._held_until = workflow.now() + policy.grant_timeout + s.duration

    async def _expand_groups(self, policy: Policy) -> list[str]:
        """Members of the approver groups join the approvers; a failure leaves the listed ones."""
        try:
            found = await workflow.execute_activity(
                "expand_approver_groups",
                ApproverGroups(groups=policy.approver_groups),
                result_type=Approvers,
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=timedelta(minutes=2),
            )
        except ActivityError as e:
            reason, _ = failure_reason(e)
            workflow.logger.warning("approver groups not expanded: %s", reason)
            self._status.warnings.append(f"approver groups could not be read: {reason}")
            return policy.approvers
        listed = {a.lower() for a in policy.approvers}
        self._group_approvers = {e.lower() for e in found.emails} - listed
        return sorted({*listed, *self._group_approvers})

    def _approver_keys(self) -> list[str]:
        """RolecallApprovers: the listed approvers and `group:S...` for each approver group.

        Not every group member: a 200-member group would pass the server's 2 KB limit on a
        search attribute and fail the workflow. Capped to stay under it.
        """
        groups = self._policy.approver_groups if self._policy is not None else []
        listed = [a for a in self._status.approvers if a not in self._group_approvers]
        keys, size = [], 0
        for key in [*(f"group:{g}" for g in groups), *listed]:
            size += len(key.encode()) + 8
            if size > 1800:
                break
            keys.append(key)
        return keys

    async def _still_in_group(self, signal: str, d: Decision, via: Origin) -> bool:
        """An approver who came from a group decides only while still in it (checked now)."""
        actor = d.actor.strip().lower()
        policy = self._policy
        if actor not in self._group_approvers or policy is None or not self._patches.on("group-at-decision"):
            return True
        found: GroupMembership = await workflow.execute_local_activity(
            "still_in_groups",
            GroupCheck(groups=policy.approver_groups, email=actor),
            result_type=GroupMembership,
            start_to_close_timeout=timedelta(seconds=10),
        )
        if not found.member:
            self._refuse(signal, d, f"{actor} is no longer in the approver group(s) {found.detail}", via)
        return found.member

    async def _check_oncall(self, policy: Policy) -> OnCallResult:
        # With auto-approval off, asking an activity costs a round trip and three events.
        if self._patches.on("skip-disabled-oncall") and not policy.pagerduty_enabled:
            return OnCallResult(on_call=False, checked=False)
        level = policy.rule.on_call_max_escalation_level if policy.rule is not None else None
        try:
            return await workflow.execute_activity_method(
                PagerDutyActivities.check_oncall,
                OnCallCheck(
                    requester=self._status.requester,
                    instance=self._status.instance,
                    max_escalation_level=level,
                ),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=2),
            )
        except ActivityError as e:
            reason, _ = failure_reason(e)
            return OnCallResult(
                on_call=False, checked=False, detail=f"PagerDuty on-call check could not be done: {reason}"
            )

    async def _finish(self, state: RequestState, event: NotificationEvent | None) -> RequestStatus:
        self._set_state(state, self._status.error or label(state))
        if event is not None:
            self._notify(event)
        if self._review_task is not None:
            # A break-glass request stays open until someone reviews it, escalating once.
            await self._review_task
        if self._notify_tail is not None:
            await self._notify_tail
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._status

    # ---- state, visibility, notifications -------------------------------------------------

    def _set_state(self, state: RequestState, details: str, index: bool = True) -> None:
        """The state, in the status and the UI's details; in visibility too unless `index` is off."""
        s = self._status
        s.state = state
        self._unindexed = not index
        attributes: list[SearchAttributeUpdate[Any]] = [
            STATE.value_set(state.value),
            REQUESTER.value_set(s.requester),
            INSTANCE.value_set(s.instance),
            ROLE.value_set(s.role),
        ]
        # Histories from before RolecallAutoApproved existed replay without it (no marker).
        if self._patches.on("auto-approved-search-attribute") and s.decided_at is not None:
            attributes.append(AUTO_APPROVED.value_set(s.auto_approved))
        if self._patches.on("ledger-search-attributes"):
            if s.db_user is not None:
                attributes.append(LOGIN.value_set(s.db_user))
            held = self._held_until
            attributes.append(EXPIRES_AT.value_set(held) if held is not None else EXPIRES_AT.value_unset())
        if self._checked and self._patches.on("rule-search-attributes"):
            attributes += [
                RULE.value_set(s.rule),
                BREAK_GLASS.value_set(s.break_glass),
                APPROVERS.value_set(self._approver_keys()),
            ]
        if self._patches.on("changed-search-attributes"):
            # The server validates every attribute of an upsert against its metadata (two
            # persistence reads each on the dev server), so send only those that changed.
            current = workflow.info().typed_search_attributes
            attributes = [a for a in attributes if current.get(a.key) != a.value]
        if attributes and index:
            workflow.upsert_search_attributes(attributes)
        observe(s, self._observed)
        workflow.set_current_details(
            f"**{state.value}**: {details}\n\n"
            f"requester `{s.requester}` (login `{s.db_user or '?'}`), role `{s.role}` "
            f"on `{s.instance}`, rule `{s.rule}`" + (" (break-glass)" if s.break_glass else "")
        )

    def _notify(self, event: NotificationEvent, detail: str = "", recipient: str | None = None) -> None:
        """Queue a notification behind the previous one; the caller does not wait for it."""
        previous = self._notify_tail
        snapshot = self._status.model_copy(deep=True)

        async def send() -> None:
            if previous is not None:
                await previous
            try:
                result = await workflow.execute_activity_method(
                    NotifyActivities.notify,
                    Notification(
                        event=event,
                        status=snapshot,
                        messages=dict(self._messages),
                        detail=detail,
                        recipient=recipient,
                    ),
                    start_to_close_timeout=timedelta(seconds=30),
                    schedule_to_close_timeout=_NOTIFY_WITHIN,
                    retry_policy=_NOTIFY_RETRY,
                )
                self._messages.update(result.messages)
            except ActivityError as e:
                workflow.logger.warning("notification %s for %s dropped: %s", event, snapshot.id, e)

        self._notify_tail = asyncio.create_task(send())

    # ---- messages ------------------------------------------------------------------------

    @workflow.update
    async def submitted(self) -> RequestStatus:
        """Answers once the check is done, so the requester learns at once if it was refused."""
        await workflow.wait_condition(lambda: self._checked)
        return self._status

    @workflow.query
    def status(self) -> RequestStatus:
        return self._status

    @workflow.signal
    async def approve(self, d: Decision) -> None:
        await self._receive("approve", d)

    @workflow.signal
    async def deny(self, d: Decision) -> None:
        await self._receive("deny", d)

    @workflow.signal
    async def cancel(self, d: Decision) -> None:
        await self._receive("cancel", d)

    @workflow.signal
    async def relinquish(self, d: Decision) -> None:
        await self._receive("relinquish", d)

    @workflow.signal
    async def review(self, d: Decision) -> None:
        await self._receive("review", d)

    @workflow.update
    async def decide(self, ask: DecideRequest) -> DecideAnswer:
        """A decision as one round trip: refused up front, or settled and answered in one task.

        The same decision as its signal, settled by the same code. What the validator refuses
        leaves no trace in the history (the caller's pre-check did the same); what it accepts
        the workflow settles and may still refuse (a race lost, a signature refused), which
        is recorded, and answered here, as for the signal.
        """
        d = ask.decision
        before = len(self._status.refused)
        await self._receive(ask.signal, d)
        actor = d.actor.lower()
        mine = [r for r in self._status.refused[before:] if r.actor == actor and r.signal == ask.signal]
        return DecideAnswer(status=self._status, refused=mine[-1].why if mine else None)

    @decide.validator
    def _validate_decide(self, ask: DecideRequest) -> None:
        if ask.signal not in SIGNALS:
            raise ValueError(f"unknown action {ask.signal!r}")
        why = refusal(ask.signal, ask.decision.actor, self._status, claimed_origin(ask.decision))
        if why:
            raise ValueError(why)

    async def _receive(self, signal: str, d: Decision) -> None:
        """One decision at a time, in arrival order: where it came from, then whether it counts.

        An unsigned decision is settled without yielding (as before signatures existed); a
        signed one waits for its verification, and the lock keeps later ones behind it.
        """
        self._settling += 1
        try:
            await self._settle(signal, d)
        finally:
            self._settling -= 1

    async def _settle(self, signal: str, d: Decision) -> None:
        async with self._decisions:
            via = await self._origin(signal, d)
            if via is None:
                return
            if signal not in ("cancel", "relinquish") and not await self._still_in_group(signal, d, via):
                return
            if signal in ("approve_extension", "deny_extension"):
                self._decide_extension(signal, d, via)
                return
            if signal in ("relinquish", "review"):
                if self._refused(signal, d, via):
                    return
                if signal == "review":
                    s = self._status
                    s.reviewed_by, s.reviewed_at, s.review_note = d.actor.lower(), workflow.now(), d.reason
                    self._notify("reviewed")
                    return
                self._relinquished = d
                self._status.decision_reason = d.reason or self._status.decision_reason
                return
            self._decide(signal, d, via)  # type: ignore[arg-type]

    async def _origin(self, signal: str, d: Decision) -> Origin | None:
        """ "slack (verified)", "cli" or "unverified"; None when a signature is refused (recorded)."""
        if d.signature is None or not self._patches.on("verified-decisions"):
            return "cli" if d.via == "cli" else "unverified"
        if d.signature in self._signatures:
            self._refuse(signal, d, "this signed decision was already used (replayed)", "unverified")
            return None
        self._signatures.add(d.signature)
        result = await workflow.execute_local_activity_method(
            DecisionActivities.verify_decision,
            VerifyDecision(request_id=self._status.id, signal=signal, decision=d),
            start_to_close_timeout=timedelta(seconds=10),
        )
        if not result.ok:
            self._refuse(signal, d, f"Slack signature refused: {result.why}", "unverified")
            return None
        return "slack (verified)"

    def _decide(self, kind: DecisionKind, d: Decision, via: Origin) -> None:
        if (
            self._decision is not None
            and self._status.state == RequestState.PENDING
            and self._patches.on("first-decision-wins")
        ):
            # Two decisions in one workflow task: the first one wins, the second is refused.
            done = {"approve": "approved", "deny": "denied", "cancel": "cancelled"}[self._decision]
            self._refuse(kind, d, f"already {done} by {self._status.decided_by}", via)
            return
        if self._refused(kind, d, via):
            return
        s = self._status
        if kind == "approve":
            s.approvals = [*s.approvals, Approval(by=d.actor.lower(), at=workflow.now(), via=via)]
            if len(s.approvals) < s.approvals_required:
                # N of M: the card shows the progress in place; the request stays pending.
                self._notify("approval_progress")
                return
        self._decision = kind
        s.decided_by = d.actor.lower()
        s.decided_at = workflow.now()
        s.decided_via = via
        s.decision_reason = d.reason

    def _refused(self, signal: str, d: Decision, via: Origin) -> bool:
        why = refusal(signal, d.actor, self._status, via)
        if why is None:
            return False
        self._refuse(signal, d, why, via)
        return True

    def _refuse(self, signal: str, d: Decision, why: str, via: str) -> None:
        workflow.logger.warning("refused %s from %s on %s: %s", signal, d.actor, self._status.id, why)
        refused = RefusedSignal(signal=signal, actor=d.actor.lower(), why=why, at=workflow.now(), via=via)
        self._status.refused.append(refused)
        # The Slack app already answered "sent"; a verified actor is told it did not count
        # (e.g. an approval that arrived just after the request timed out).
        if via == "slack (verified)" and d.slack_user_id and self._patches.on("tell-refused-actor"):
            self._notify("refused", f"{signal}: {why}", recipient=d.slack_user_id)
