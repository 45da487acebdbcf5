"""Payloads shared by the workflow, the activities, the Slack app and the CLI.

Every workflow, activity, signal and query takes one of these models and returns one,
so the Temporal history holds readable JSON and old histories replay against new code.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Model(BaseModel):
    model_config = ConfigDict(frozen=False, extra="forbid")


class RequestState(StrEnum):
    PENDING = "pending"  # checked, waiting for a decision
    APPROVED = "approved"  # decided, grant in progress
    GRANTED = "granted"
    REVOKING = "revoking"  # expiry or relinquish reached, revoke in progress (or retrying)
    REJECTED = "rejected"  # the check refused it before anyone was asked
    DENIED = "denied"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    FAILED = "failed"
    EXPIRED = "expired"
    RELINQUISHED = "relinquished"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {
        RequestState.REJECTED,
        RequestState.DENIED,
        RequestState.TIMED_OUT,
        RequestState.CANCELLED,
        RequestState.FAILED,
        RequestState.EXPIRED,
        RequestState.RELINQUISHED,
    }
)


class AccessRequest(Model):
    """What a requester asked for; the workflow's only input."""

    requester: str = Field(description="requester's email, lower-case")
    requester_name: str = ""
    instance: str
    role: str
    duration: timedelta
    reason: str = ""
    source: Literal["slack", "cli"] = "cli"
    slack_user_id: str | None = None


class Policy(Model):
    """The rules that applied to one request, snapshotted by the check activity."""

    approvers: list[str]
    approver_groups: list[str] = []
    slack_channel: str | None = None
    allow_self_approval: bool = False
    max_duration: timedelta
    approval_timeout: timedelta
    grant_timeout: timedelta
    terminate_sessions: bool = True
    revoke_alert_after: int = 5
    auto_approve_max: timedelta = timedelta(hours=1)
    pagerduty_enabled: bool = True  # histories from before this field ran the check


class CheckResult(Model):
    db_user: str
    duration: timedelta
    policy: Policy
    warnings: list[str] = []


class OnCallCheck(Model):
    requester: str
    instance: str


class OnCallResult(Model):
    on_call: bool
    checked: bool = True  # False when the check could not be done (error, disabled)
    # Shown verbatim to approvers when non-empty: why it was auto-approved, or why the
    # on-call check could not be done. Empty when auto-approval is off or the user is not on call.
    detail: str = ""


class ApproverGroups(Model):
    """Slack user groups whose members may approve; expanded once, when the request is checked."""

    groups: list[str]


class Approvers(Model):
    emails: list[str]
    detail: str = ""


class Decision(Model):
    """A signal payload: who did it, and why."""

    actor: str = Field(description="email of whoever sent the signal")
    reason: str = ""
    via: Literal["slack", "cli"] = "cli"


class RefusedSignal(Model):
    signal: str
    actor: str
    why: str
    at: datetime


class GrantInput(Model):
    request_id: str
    instance: str
    role: str
    db_user: str


class PrepareResult(Model):
    """Recorded once, before the first grant attempt, so retries cannot mistake their own grant."""

    pre_existing: bool
    server_version: int


class GrantResult(Model):
    granted: bool
    grantor: str | None = None


class RevokeInput(Model):
    request_id: str
    instance: str
    role: str
    db_user: str
    terminate_sessions: bool = True
    pre_existing: bool = False
    alert_after: int = 5


class RevokeResult(Model):
    revoked: bool
    terminated_sessions: int = 0
    note: str = ""


class RequestStatus(Model):
    """The status query's answer and the workflow's result."""

    id: str
    state: RequestState
    requester: str
    requester_name: str = ""
    instance: str
    role: str
    db_user: str | None = None
    reason: str = ""
    source: Literal["slack", "cli"] = "cli"
    slack_user_id: str | None = None
    approver_channel: str | None = None
    requested_duration: timedelta
    duration: timedelta | None = None
    requested_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_reason: str = ""
    auto_approved: bool = False
    on_call_detail: str = ""
    granted_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    pre_existing: bool = False
    error: str | None = None
    error_type: str | None = None
    warnings: list[str] = []
    approvers: list[str] = []
    allow_self_approval: bool = False
    refused: list[RefusedSignal] = []


NotificationEvent = Literal[
    "requested",
    "rejected",
    "approved",
    "granted",
    "denied",
    "timed_out",
    "cancelled",
    "failed",
    "expired",
    "relinquished",
    "revoke_failing",
]


class MessageRef(Model):
    """Where a message was posted, so later notifications update it in place."""

    channel: str
    ts: str


class Notification(Model):
    event: NotificationEvent
    status: RequestStatus
    messages: dict[str, MessageRef] = {}
    detail: str = ""


class NotifyResult(Model):
    messages: dict[str, MessageRef] = {}


class ReconcileInput(Model):
    instance: str
    dry_run: bool = False


class Membership(Model):
    role: str
    member: str
    grantor: str


class OpenGrants(Model):
    """(role, login) pairs that an open request stands behind."""

    pairs: list[tuple[str, str]]


class MembershipList(Model):
    ours: list[Membership]  # granted by rolecall's admin login
    foreign: list[Membership]  # granted by someone else: reported, never touched
    admin_login: str
    terminate_sessions: bool = True
    channel: str | None = None


class ReconcileReport(Model):
    instance: str
    dry_run: bool
    channel: str | None = None
    orphans: list[Membership] = []
    revoked: list[Membership] = []
    foreign: list[Membership] = []
    errors: list[str] = []

    def summary(self) -> str:
        verb = "would revoke" if self.dry_run else "revoked"
        lines = [
            f"reconcile {self.instance}: {len(self.orphans)} orphaned grant(s), "
            f"{len(self.foreign)} granted outside rolecall"
        ]
        done = self.orphans if self.dry_run else self.revoked
        lines += [f"  {verb}: {m.role} from {m.member} (granted by {m.grantor})" for m in done]
        lines += [
            f"  outside rolecall (left alone): {m.role} held by {m.member}, granted by {m.grantor}"
            for m in self.foreign
        ]
        lines += [f"  error: {e}" for e in self.errors]
        return "\n".join(lines)
