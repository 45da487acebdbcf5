"""What the clients (CLI, Slack app, operator tools) and the worker share about Temporal.

A client talks to a workflow by these names and the models they carry, never by importing
`workflows/`: that package pulls in `activities/` and so psycopg, pdpyras and the worker's
side of slack_sdk, none of which a client needs. The names are the workflows' own (class and
method names in `workflows/`); tests/test_layout.py checks that the two agree, so a rename on
one side fails there rather than in production.

Models stay in `rolecall.models`; they are re-exported here so a client can read, in one
place, what each name takes and answers.
"""

from __future__ import annotations

from typing import Final

from rolecall.models import (
    AccessRequest,
    CatalogInput,
    DecideAnswer,
    DecideRequest,
    Decision,
    ExtendAnswer,
    ExtendRequest,
    ReconcileInput,
    ReconcileReport,
    RequestStatus,
    RoleList,
)
from rolecall.policy import DECISIONS, SIGNALS
from rolecall.temporal import request_id

__all__ = [
    "ACCESS_REQUEST",
    "APPROVE",
    "APPROVE_EXTENSION",
    "CANCEL",
    "CATALOG",
    "CATALOG_REFRESH",
    "CATALOG_ROLES",
    "DECIDE",
    "DECISIONS",
    "DENY",
    "DENY_EXTENSION",
    "EXTEND",
    "ONE_RUN_PER_REQUEST",
    "RECONCILE",
    "RELINQUISH",
    "REQUESTED_AT",
    "REVIEW",
    "SIGNALS",
    "STATUS",
    "SUBMITTED",
    "AccessRequest",
    "CatalogInput",
    "DecideAnswer",
    "DecideRequest",
    "Decision",
    "ExtendAnswer",
    "ExtendRequest",
    "ReconcileInput",
    "ReconcileReport",
    "RequestStatus",
    "RoleList",
    "catalog_id",
    "manual_reconcile_id",
    "reconcile_id",
    "request_id",
]

# ---- the access request: one workflow per request ------------------------------------------

# Workflow type. Input: AccessRequest. Result: RequestStatus (the final one).
# Its ID is `request_id(instance, role, requester)`.
ACCESS_REQUEST: Final = "AccessRequestWorkflow"
# A grant held past 15 s continues in a fresh run of the same ID (rolecall.models.HeldGrant);
# the run it left closes as ContinuedAsNew. Visibility queries that count or list requests
# leave those out, so each request is one row; the run's memo REQUESTED_AT keeps when it began.
ONE_RUN_PER_REQUEST: Final = 'ExecutionStatus != "ContinuedAsNew"'
REQUESTED_AT: Final = "requested_at"
# Update, no argument -> RequestStatus: answers once the check is done (used with start).
SUBMITTED: Final = "submitted"
# Query, no argument -> RequestStatus.
STATUS: Final = "status"
# Signals, each carrying a Decision (the actor and why). `rolecall.policy.refusal` says
# whether the actor may send one; the workflow asks it again and records refusals.
APPROVE: Final = "approve"
DENY: Final = "deny"
CANCEL: Final = "cancel"
RELINQUISH: Final = "relinquish"
REVIEW: Final = "review"  # a break-glass grant reviewed by an approver
APPROVE_EXTENSION: Final = "approve_extension"
DENY_EXTENSION: Final = "deny_extension"
# Update, DecideRequest -> DecideAnswer: any of the signals above, as one round trip. Its
# validator refuses (with `refusal`'s line, nothing recorded) what the pre-check would have;
# it answers once the workflow task that settled the decision completes, with the refusal
# the workflow recorded, if any. Clients fall back to the pre-check and the signal when a
# worker of an older release (a rolling deploy) does not know it.
DECIDE: Final = "decide"
# Update, ExtendRequest -> ExtendAnswer: the requester asks for more time on a granted request;
# refused (validator) with the reason, approved at once, or left pending for the approvers.
EXTEND: Final = "extend"

# ---- the role catalog: what the request modal offers, read on the worker side ---------------

# Workflow type. Input: CatalogInput. Query `roles` -> RoleList; signal `refresh`.
CATALOG: Final = "CatalogWorkflow"
CATALOG_ROLES: Final = "roles"
CATALOG_REFRESH: Final = "refresh"


def catalog_id(task_queue: str, instance: str) -> str:
    return f"catalog/{task_queue}/{instance}"


# ---- the reconciler -------------------------------------------------------------------------

# Workflow type. Input: ReconcileInput. Result: ReconcileReport.
RECONCILE: Final = "ReconcileWorkflow"


def reconcile_id(task_queue: str, instance: str) -> str:
    """The ID of the scheduled reconcile runs of one instance of one deployment.

    The task queue is in it, as in the schedule's own ID: two deployments sharing a namespace
    may both name an instance "pg", and the scheduler only appends the time to this ID, so
    their runs of the same second would collide and one of them would not start.
    """
    return f"reconcile/{task_queue}/{instance}"


def manual_reconcile_id(task_queue: str, instance: str, suffix: str) -> str:
    """The ID of a `rolecall reconcile` run: never the schedule's, so both may run."""
    return f"{reconcile_id(task_queue, instance)}/manual-{suffix}"
