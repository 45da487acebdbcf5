"""Who may send which decision: one pure function, used by the workflow and by its callers.

The workflow runs it in the decide update's validator (a refusal there is the caller's one
clear line, and nothing is recorded) and again on every decision it settles, so a forged or
stale caller changes nothing. Callers run it themselves only on the signal path a worker of an
older release still needs.
"""

from __future__ import annotations

from rolecall.models import Decision, RequestState, RequestStatus

DECISIONS = ("approve", "deny", "cancel")
EXTENSION_DECISIONS = ("approve_extension", "deny_extension")
SIGNALS = (*DECISIONS, "relinquish", "review", *EXTENSION_DECISIONS)


VERIFIED = "slack (verified)"


def claimed_origin(decision: Decision) -> str:
    """Where the workflow will say a decision came from, if its signature (if any) verifies."""
    if decision.via == "cli":
        return "cli"
    return VERIFIED if decision.signature else "unverified"


def refusal(signal: str, actor: str, status: RequestStatus, via: str = "cli") -> str | None:
    """Why `actor` may not send `signal` to this request now, or None if they may.

    `via` is where the decision comes from: "slack (verified)" (signed by the Slack app and
    verified by the worker), "cli", or "unverified".
    """
    actor = actor.strip().lower()
    state = status.state
    is_requester = actor == status.requester
    if signal not in SIGNALS:
        return f"unknown action {signal!r}"
    if not status.accept_unverified_decisions and via != VERIFIED:
        return (
            f"instance {status.instance!r} accepts only decisions made in Slack and verified by "
            f"rolecall; this one is {'from the CLI' if via == 'cli' else via}"
        )
    if signal in EXTENSION_DECISIONS:
        if state != RequestState.GRANTED:
            return f"this access is {label(state)}: there is no extension to decide"
        if is_requester:
            return "you can't decide on your own extension"
        if actor not in status.approvers:
            return f"{actor} is not an approver for instance {status.instance!r}"
        return None
    if signal == "review":
        if not status.break_glass:
            return "only break-glass grants are reviewed"
        if is_requester:
            return "you can't review your own break-glass access"
        if actor not in status.approvers:
            return f"{actor} is not an approver for instance {status.instance!r}"
        if status.reviewed_by:
            return f"already reviewed by {status.reviewed_by}"
        return None
    if signal == "relinquish":
        if not is_requester:
            return f"only the requester ({status.requester}) can relinquish this access"
        if state in (RequestState.PENDING, RequestState.APPROVED):
            return "this access has not been granted yet; cancel the request instead"
        if state != RequestState.GRANTED:
            return f"this access is already {label(state)}"
        return None
    if state != RequestState.PENDING:
        if status.auto_approved:
            return f"already auto-approved ({status.on_call_detail or 'requester on call'})"
        if status.decided_by:
            verb = {RequestState.DENIED: "denied", RequestState.CANCELLED: "cancelled"}
            return f"already {verb.get(state, 'approved')} by {status.decided_by}"
        return f"this request is already {label(state)}"
    if status.db_user is None:
        return "this request is still being checked; try again in a moment"
    if signal == "cancel":
        return None if is_requester else "only the requester can cancel a request"
    if actor not in status.approvers:
        return f"{actor} is not an approver for instance {status.instance!r}"
    if signal == "approve" and status.approvals_required > 1:
        if is_requester:
            return (
                f"the requester never counts toward the {status.approvals_required} approvals "
                f"rule {status.rule} needs"
            )
        if any(a.by == actor for a in status.approvals):
            return f"you already approved ({len(status.approvals)} of {status.approvals_required})"
    if signal == "approve" and is_requester and not status.allow_self_approval:
        return "you can't approve your own request"
    return None


def label(state: RequestState) -> str:
    return state.value.replace("_", " ")
