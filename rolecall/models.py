"""Payloads shared by the workflow, the activities, the Slack app and the CLI.

Every workflow, activity, signal and query takes one of these models and returns one,
so the Temporal history holds readable JSON and old histories replay against new code.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rolecall.privileges.model import Privileges


class Model(BaseModel):
    # Unknown fields are ignored, never refused: during a rolling deploy a newer Slack app or
    # CLI may send a field this worker does not know, and a refused payload would make the SDK
    # drop the signal; old histories may also hold fields a newer release removed.
    model_config = ConfigDict(frozen=False, extra="ignore")


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
    break_glass: bool = False  # emergency access: granted at once, reviewed afterwards
    # Set only by the workflow itself when a held grant continues in a fresh run (HeldGrant).
    held: HeldGrant | None = None


class Target(Model):
    """How to reach an instance and how rolecall grants there, snapshotted at check time.

    A revoke must never depend on the instance still being in the config file: it connects
    with the current config when the instance is there, and with this snapshot when it is
    not. The grantor is a fact of how the grant was made, so it always comes from here.
    """

    instance: str
    dsn_env: str
    connect_timeout: int = 5
    lock_timeout: timedelta = timedelta(seconds=5)
    statement_timeout: timedelta = timedelta(seconds=30)
    max_connections: int = 5
    grantor: str | None = None  # GRANTED BY this role; None: the admin login itself


class AppliedRule(Model):
    """The rule that applied to one request, every key resolved (rule, else instance, else default)."""

    name: str = "default"
    approvers: list[str] = []
    approver_groups: list[str] = []
    approvals_required: int = 1
    allow_self_approval: bool = False
    default_duration: timedelta = timedelta(hours=1)
    max_duration: timedelta = timedelta(hours=8)
    approval_timeout: timedelta = timedelta(hours=24)
    terminate_sessions: bool = True
    auto_approve: Literal["never", "on_call", "always"] = "never"
    on_call_max_escalation_level: int = 1
    auto_approve_max: timedelta = timedelta(hours=1)
    require_reason: bool = False
    reason_pattern: str | None = None
    break_glass: bool = False
    break_glass_max: timedelta | None = None
    review_within: timedelta = timedelta(hours=12)
    expiry_warning: timedelta = timedelta(0)  # 0: no warning (histories from before day two)
    extend_approval: Literal["approver", "auto"] = "approver"
    max_total_duration: timedelta | None = None  # None: max_duration
    max_extensions: int = 3
    remind_after: timedelta | None = None
    remind_every: timedelta | None = None
    escalate_after: timedelta | None = None
    escalate_to: list[str] = []


class PrivilegesSnapshot(Model):
    """What the role granted when the request was checked: the card's line and the drift baseline.

    Small by construction (see rolecall/privileges/snapshot.py): the whole `Privileges` is kept
    only while its JSON is under a cap, so that `diff` can name what changed; a larger role
    keeps only its digest and counts, and any change to it holds the grant.
    """

    readable: bool = True
    summary: str = ""  # one line, or "privileges could not be read: <why>"
    detail: str = ""  # the grouped list, cut to fit a Slack section
    privileges: Privileges | None = None  # None: too large to keep (or not readable)
    digest: str = ""  # sha256 of what can be gained (see snapshot.digest)
    counts: dict[str, int] = {}
    seconds: float = 0.0  # how long reading it took


class Policy(Model):
    """The rules that applied to one request, snapshotted by the check activity."""

    approvers: list[str]
    approver_groups: list[str] = []
    slack_channel: str | None = None
    allow_self_approval: bool = False
    approval_timeout: timedelta
    grant_timeout: timedelta
    terminate_sessions: bool = True
    revoke_alert_after: int = 5
    auto_approve_max: timedelta = timedelta(hours=1)
    pagerduty_enabled: bool = True  # histories from before this field ran the check
    # False: only decisions made in Slack and verified by the worker count (CLI refused).
    accept_unverified_decisions: bool = True
    target: Target | None = None  # None in histories from before the snapshot existed
    # The rule that applied; None in histories from before rules (then: one approval, and
    # auto-approval on call exactly when PagerDuty was enabled).
    rule: AppliedRule | None = None
    # The role's privileges at check time; None in histories from before the snapshot.
    privileges: PrivilegesSnapshot | None = None


class CheckResult(Model):
    db_user: str
    duration: timedelta
    policy: Policy
    warnings: list[str] = []


class OnCallCheck(Model):
    requester: str
    instance: str
    max_escalation_level: int | None = None  # the rule's; None: [pagerduty]'s


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
    """A signal payload: who did it, and why.

    From Slack it is signed (rolecall.signing) over the request, the signal, the actor, the
    Slack user and the time; the workflow has it verified before it counts.
    """

    actor: str = Field(description="email of whoever sent the signal")
    reason: str = ""
    via: Literal["slack", "cli"] = "cli"
    slack_user_id: str | None = None
    signed_at: datetime | None = None
    signature: str | None = None


Origin = Literal["slack (verified)", "cli", "unverified"]


class VerifyDecision(Model):
    request_id: str
    signal: str
    decision: Decision


class Verified(Model):
    ok: bool
    why: str = ""  # when not ok: why the signature does not verify


class Approval(Model):
    by: str
    at: datetime
    via: str = ""


class Extension(Model):
    """One ask for more time on a granted request, and how it was decided."""

    asked_by: str
    at: datetime
    added: timedelta
    reason: str = ""
    state: Literal["pending", "approved", "denied", "expired", "relinquished"] = "pending"
    decided_by: str | None = None
    decided_at: datetime | None = None
    via: str = ""
    approvals: list[Approval] = []


class ExtendRequest(Model):
    """The extend update's input: who asks (a Decision, signed from Slack) and for how long."""

    decision: Decision
    by: timedelta


class ExtendAnswer(Model):
    state: Literal["approved", "pending"]
    expires_at: datetime | None = None
    message: str


class RefusedSignal(Model):
    signal: str
    actor: str
    why: str
    at: datetime
    via: str = ""


class GrantInput(Model):
    request_id: str
    instance: str
    role: str
    db_user: str
    target: Target | None = None
    # What the approvers were shown; the grant refuses when the role has gained since.
    privileges: PrivilegesSnapshot | None = None


class PrepareResult(Model):
    """Recorded once, before the first grant attempt, so retries cannot mistake their own grant."""

    pre_existing: bool


class GrantResult(Model):
    granted: bool
    # What the lent role (and the roles it contains) owned when it was granted, so the revoke
    # can tell which objects were created while it was lent.
    owned: list[str] = []
    warnings: list[str] = []
    # The xmin of the pg_auth_members row this grant left: the identity of rolecall's row.
    # A row someone makes later (even for the same role and login, by the same login) has
    # another xmin, so the reconciler can tell rolecall's row from every other.
    row_xmin: str | None = None


class RevokeInput(Model):
    request_id: str
    instance: str
    role: str
    db_user: str
    terminate_sessions: bool = True
    pre_existing: bool = False
    target: Target | None = None
    owned_at_grant: list[str] | None = None  # None: not known (nothing to compare)
    # The reconciler's revoke: only when the membership row is rolecall's (by its grantor),
    # never a grant someone else made of the same role to the same login.
    require_ours: bool = False
    row_xmin: str | None = None  # with require_ours: revoke only this exact row


class RevokeResult(Model):
    revoked: bool
    terminated_sessions: int = 0
    note: str = ""
    new_objects: list[str] = []  # owned by the role now, not at grant: reported, never dropped


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
    decided_via: str = ""  # "slack (verified)", "cli" or "unverified"
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
    accept_unverified_decisions: bool = True
    refused: list[RefusedSignal] = []
    rule: str = "default"  # the rule that applied (see AppliedRule)
    approvals_required: int = 1
    approvals: list[Approval] = []
    break_glass: bool = False
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    review_note: str = ""
    review_escalated_at: datetime | None = None
    extensions: list[Extension] = []
    expiry_warned_for: datetime | None = None  # the expiry the last warning was about
    reminded: int = 0  # reminders posted while the request (or an extension) waited
    escalated_at: datetime | None = None
    # Objects the lent role came to own while it was lent (found at revoke): they outlive the
    # membership, so approvers are told. rolecall never drops them.
    new_objects: list[str] = []
    # What the role grants (the card's line, the Details modal): from the check, or from the
    # grant's re-read when the role gained privileges before it was granted.
    privileges_summary: str = ""
    privileges_detail: str = ""


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
    "refused",  # a verified Slack actor's decision did not count: tell them why
    "approval_progress",  # N of M: one more approval, still pending
    "break_glass",  # emergency access granted at once: an alert for the approvers
    "review_overdue",  # nobody reviewed a break-glass grant in time
    "reviewed",
    "expiring",  # the expiry warning DM, with Extend and Relinquish
    "extension_requested",  # in the approvers' thread, with Approve / Deny
    "extended",
    "extension_denied",
    "reminder",  # a pending request (or extension) still waits: a threaded reply
    "escalated",  # posted to escalate_to with working buttons
    "privileges_changed",  # the role gained privileges before the grant: approve again
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
    recipient: str | None = None  # a Slack user ID, for events told to one person


class NotifyResult(Model):
    messages: dict[str, MessageRef] = {}


class ReconcileInput(Model):
    instance: str
    dry_run: bool = False


class Membership(Model):
    role: str
    member: str
    grantor: str


class StrandedGrant(Model):
    """A request that may still hold its grant, past its expiry plus the grace period.

    Found in Temporal's visibility store (the ledger): its workflow was terminated, keeps
    failing, or otherwise never verified its revoke.
    """

    request_id: str
    run_id: str | None = None
    execution: str  # Running, Terminated, Failed, TimedOut, ...
    role: str
    login: str
    expires_at: datetime
    target: Target | None = None
    terminate_sessions: bool = True
    channel: str | None = None
    row_xmin: str | None = None  # None: the grant's answer was lost, its row can't be proven


class Ledger(Model):
    """What Temporal says rolecall holds on one instance."""

    protected: list[tuple[str, str]]  # (role, login) behind a healthy open request
    stranded: list[StrandedGrant] = []


class MembershipList(Model):
    configured: bool = True  # False: the instance left the config; only stranded grants are swept
    ours: list[Membership] = []  # recorded with rolecall's grantor
    foreign: list[Membership] = []  # granted by someone else: reported, never touched
    admin_login: str = ""
    terminate_sessions: bool = True
    channel: str | None = None


class ReconcileReport(Model):
    instance: str
    dry_run: bool
    channel: str | None = None
    stranded: list[StrandedGrant] = []  # found past expiry + grace
    revoked: list[StrandedGrant] = []  # of those, revoked now and verified
    # Recorded with rolecall's grantor, but no request in the ledger stands behind it: made by
    # hand with rolecall's login, or by a request older than the ledger. Reported, not touched.
    unproven: list[Membership] = []
    foreign: list[Membership] = []
    errors: list[str] = []

    @property
    def alarming(self) -> bool:
        """Worth telling the approvers: something was (or would be) revoked, or went wrong."""
        return bool(self.revoked or self.errors or (self.dry_run and self.stranded))

    def summary(self) -> str:
        verb = "would revoke" if self.dry_run else "revoked"
        lines = [
            f"reconcile {self.instance}: {len(self.stranded)} stranded grant(s), "
            f"{len(self.unproven) + len(self.foreign)} granted outside rolecall's requests"
        ]
        done = self.stranded if self.dry_run else self.revoked
        lines += [
            f"  {verb}: {g.role} from {g.login} (request {g.request_id}, {g.execution.lower()}, "
            f"expired {g.expires_at:%Y-%m-%d %H:%M:%S} UTC)"
            for g in done
        ]
        lines += [
            f"  no rolecall request behind it (left alone): {m.role} held by {m.member}, "
            f"granted by {m.grantor}"
            for m in self.unproven
        ]
        lines += [
            f"  outside rolecall (left alone): {m.role} held by {m.member}, granted by {m.grantor}"
            for m in self.foreign
        ]
        lines += [f"  error: {e}" for e in self.errors]
        return "\n".join(lines)


class CatalogInput(Model):
    instance: str
    refresh: timedelta = timedelta(seconds=60)


class RoleList(Model):
    """The requestable roles that exist on an instance, as the worker last read them."""

    roles: list[str] = []
    loaded: bool = False
    error: str = ""


class GroupCheck(Model):
    groups: list[str]
    email: str


class GroupMembership(Model):
    member: bool
    detail: str = ""


class Listed(Model):
    """One request as the visibility store has it: enough for a list, no query to its workflow."""

    id: str
    state: str
    requester: str
    instance: str
    role: str
    started: datetime
    expires_at: datetime | None = None  # while a grant may be held
    rule: str = ""
    break_glass: bool = False


class Page(Model):
    """One page of a list, how many match in all, and the token of the next page (if any)."""

    rows: list[Listed]
    total: int
    next_page: str | None = None


class HeldGrant(Model):
    """A granted request carried into a fresh run of its workflow (continue-as-new).

    A cached run costs the worker memory for every command it has issued so far (about 5 to
    10 KB each, in the SDK's core: bench/README.md), and a run woken after eviction replays
    its whole history. A grant held for longer than 15 s is therefore carried
    into a new run of the same workflow ID: the state below, and nothing of the history
    that led to it. It holds what the rest of the lifecycle needs (who, what, until when,
    how to revoke, where the messages are, the signatures already used) and the grant's
    result, which the reconciler reads from the new run's input.
    """

    status: RequestStatus
    policy: Policy
    grant: GrantResult
    owned: list[str] | None = None  # what the role owned at grant (None: not compared)
    held_until: datetime | None = None  # the ledger's RolecallExpiresAt
    messages: dict[str, MessageRef] = {}
    signatures: list[str] = []  # signed decisions already used: each counts once
    group_approvers: list[str] = []
    observed: list[str] = []  # metrics already recorded
    # The patch fold the handing-on run took (workflows/patches.py): the new run takes the
    # same behaviours without recording a marker of its own (9 KB and an upsert saved).
    folded: str = ""


AccessRequest.model_rebuild()


class DecideRequest(Model):
    """The decide update's input: a decision (approve, deny, cancel, relinquish, review, ...)
    and the signal it stands for, so that both ways in are settled by the same code."""

    signal: str
    decision: Decision


class DecideAnswer(Model):
    """What became of a decision, read in the workflow task that settled it.

    `refused` is the workflow's reason when the decision did not count (a race lost to another
    click, a signature refused); `status` is the request as that task left it.
    """

    status: RequestStatus
    refused: str | None = None
