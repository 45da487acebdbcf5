"""Block Kit for rolecall: pure functions from models to the dicts Slack expects.

Nothing here talks to Slack or Temporal, so every message and view can be built and
validated in isolation. Buttons carry only the request ID; who clicked is checked later.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from rolecall.config import Instance
from rolecall.durations import format_duration
from rolecall.models import Listed, Page, ReconcileReport, RequestState, RequestStatus
from rolecall.policy import label

Block = dict[str, Any]

# Action and callback IDs: the Slack app routes on these.
REQUEST_MODAL = "rolecall_request"
DENY_MODAL = "rolecall_deny"
APPROVE = "rolecall_approve"
DENY = "rolecall_deny_open"
CANCEL = "rolecall_cancel"
RELINQUISH = "rolecall_relinquish"
REVIEW = "rolecall_review"
EXTEND = "rolecall_extend"
APPROVE_EXTENSION = "rolecall_extend_approve"
DENY_EXTENSION = "rolecall_extend_deny"
EXTEND_MODAL = "rolecall_extend_modal"
B_EXTEND_BY = "extend_by"
B_EXTEND_REASON = "extend_reason"
PRIVILEGES = "rolecall_privileges"  # the card's Details button: the role's grouped privileges
INSTANCE_SELECT = "rolecall_instance"
ROLE_SELECT = "rolecall_role"  # the role picker when it is a type-ahead (external_select)
HOME_MORE = "rolecall_home_more"  # App Home: the next page of requests waiting for you
# A static select holds at most this many options; beyond, the modal uses a type-ahead.
MAX_OPTIONS = 100
# Block IDs of the request modal (errors are keyed by block ID).
B_INSTANCE, B_KIND, B_ROLE, B_DURATION, B_REASON = "instance", "kind", "role", "duration", "reason"
B_DENY_REASON = "deny_reason"
B_BREAK_GLASS = "break_glass"
BREAK_GLASS_ON = "on"  # the value of the break-glass checkbox when ticked

DURATION_CHOICES = [
    timedelta(minutes=15),
    timedelta(minutes=30),
    timedelta(hours=1),
    timedelta(hours=2),
    timedelta(hours=4),
    timedelta(hours=8),
    timedelta(hours=12),
    timedelta(days=1),
    timedelta(days=2),
    timedelta(days=7),
]

_ICON = {
    RequestState.PENDING: ":hourglass_flowing_sand:",
    RequestState.APPROVED: ":white_check_mark:",
    RequestState.GRANTED: ":unlock:",
    RequestState.REVOKING: ":lock:",
    RequestState.REJECTED: ":no_entry_sign:",
    RequestState.DENIED: ":x:",
    RequestState.TIMED_OUT: ":alarm_clock:",
    RequestState.CANCELLED: ":heavy_multiplication_x:",
    RequestState.FAILED: ":warning:",
    RequestState.EXPIRED: ":lock:",
    RequestState.RELINQUISHED: ":lock:",
}


# ---- small pieces ------------------------------------------------------------------------


def plain(text: str, limit: int = 150) -> dict[str, Any]:
    return {"type": "plain_text", "text": _cut(text, limit), "emoji": True}


def mrkdwn(text: str, limit: int = 3000) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": _cut(text, limit)}


def section(text: str) -> Block:
    return {"type": "section", "text": mrkdwn(text)}


def context(text: str) -> Block:
    return {"type": "context", "elements": [mrkdwn(text)]}


def option(text: str, value: str) -> dict[str, Any]:
    return {"text": plain(text, 75), "value": value[:150]}


def button(text: str, action_id: str, value: str, style: str | None = None) -> dict[str, Any]:
    b: dict[str, Any] = {"type": "button", "text": plain(text, 75), "action_id": action_id, "value": value}
    if style:
        b["style"] = style
    return b


def escape(text: str) -> str:
    """Slack's three control characters; everything user-supplied goes through here."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_date(when: datetime) -> str:
    """A date each reader sees in their own time zone, with a UTC fallback."""
    epoch = int(when.timestamp())
    fallback = when.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{epoch}^{{date_short_pretty}} at {{time}}|{fallback}>"


def who(status: RequestStatus) -> str:
    if status.slack_user_id:
        return f"<@{status.slack_user_id}>"
    return escape(status.requester_name or status.requester)


def duration_of(status: RequestStatus) -> str:
    return format_duration(status.duration or status.requested_duration)


def _fields(status: RequestStatus) -> Block:
    fields = [
        mrkdwn(f"*Requester*\n{who(status)} ({escape(status.requester)})"),
        mrkdwn(f"*Instance*\n`{escape(status.instance)}`"),
        mrkdwn(f"*Role*\n`{escape(status.role)}`"),
        mrkdwn(f"*Duration*\n{duration_of(status)}"),
        mrkdwn(f"*Database login*\n`{escape(status.db_user or '?')}`"),
        mrkdwn(f"*Reason*\n{escape(status.reason) or '_none given_'}", 2000),
    ]
    return {"type": "section", "fields": fields}


def _privileges(status: RequestStatus) -> list[Block]:
    """The role's privileges in one line (read when the request was checked, or at the grant)."""
    if not status.privileges_summary:
        return []
    return [context(f":mag: *Privileges:* {escape(status.privileges_summary)}")]


def _warnings(status: RequestStatus) -> list[Block]:
    if not status.warnings:
        return []
    return [context(":warning: " + escape("; ".join(status.warnings)))]


def _via(status: RequestStatus) -> str:
    """Where the decision came from, so an approver can tell a verified click from a CLI call."""
    return f" (via {escape(status.decided_via)})" if status.decided_via else ""


def _decided_line(status: RequestStatus) -> str:
    """Who decided and when, for the message everyone already saw."""
    s = status
    when = f" on {slack_date(s.decided_at)}" if s.decided_at else ""
    reason = f": {escape(s.decision_reason)}" if s.decision_reason else ""
    if s.break_glass:
        return f":rotating_light: Break-glass: granted at once to {escape(s.requester)}{when}{reason}"
    if s.auto_approved:
        return f":robot_face: Auto-approved{when}: {escape(s.on_call_detail)}"
    if s.state == RequestState.DENIED:
        return f":x: Denied by {escape(s.decided_by or '?')}{when}{_via(s)}{reason}"
    if s.state == RequestState.CANCELLED:
        return f":heavy_multiplication_x: Cancelled by the requester{when}"
    if s.state == RequestState.TIMED_OUT:
        return ":alarm_clock: Nobody decided in time; the request timed out"
    if s.state == RequestState.REJECTED:
        return f":no_entry_sign: Rejected: {escape(s.error or '')}"
    if s.decided_by:
        return f":white_check_mark: Approved by {escape(s.decided_by)}{when}{_via(s)}"
    return f"{_ICON[s.state]} {label(s.state).capitalize()}"


def _outcome_line(status: RequestStatus) -> str:
    """What happened to access that was approved, for the approvers' message."""
    s = status
    if s.state == RequestState.GRANTED and s.expires_at:
        return f":unlock: Granted until {slack_date(s.expires_at)}"
    if s.state == RequestState.EXPIRED:
        return ":lock: Access expired and was revoked"
    if s.state == RequestState.RELINQUISHED:
        return ":lock: Access relinquished and revoked"
    if s.state == RequestState.FAILED:
        return f":warning: Grant failed: {escape(s.error or '?')}"
    if s.state == RequestState.REVOKING:
        return ":lock: Revoking"
    return ""


# ---- messages ----------------------------------------------------------------------------


def _rule_lines(s: RequestStatus) -> list[Block]:
    """Which rule applied, and for N of M the approvals so far."""
    parts = []
    if s.rule != "default":
        parts.append(f"Rule: *{escape(s.rule)}*")
    if s.approvals_required > 1:
        done = ", ".join(f"{escape(a.by)} {slack_date(a.at)}" for a in s.approvals) or "none yet"
        parts.append(f"{len(s.approvals)} of {s.approvals_required} approvals: {done}")
    return [context(" · ".join(parts))] if parts else []


def _review_blocks(s: RequestStatus) -> list[Block]:
    if s.reviewed_by:
        note = f": {escape(s.review_note)}" if s.review_note else ""
        when = slack_date(s.reviewed_at) if s.reviewed_at else ""
        return [context(f":white_check_mark: Reviewed by {escape(s.reviewed_by)} {when}{note}")]
    blocks: list[Block] = [
        {"type": "actions", "block_id": "review", "elements": [button("Reviewed", REVIEW, s.id, "primary")]}
    ]
    if s.review_escalated_at:
        blocks.append(
            context(f":warning: Not reviewed in time; escalated {slack_date(s.review_escalated_at)}")
        )
    return blocks


def review_reminder(s: RequestStatus) -> tuple[str, list[Block]]:
    """The escalation of an unreviewed break-glass grant: a thread reply and a DM per approver."""
    text = f"Break-glass access of {s.requester} to {s.role} on {s.instance} still needs a review"
    line = (
        f":rotating_light: Nobody has reviewed {who(s)}'s break-glass access to `{escape(s.role)}` on "
        f"`{escape(s.instance)}` yet (granted {slack_date(s.decided_at) if s.decided_at else ''}). "
        f"Approvers: {escape(', '.join(s.approvers))}"
    )
    return text, [
        section(line),
        {"type": "actions", "elements": [button("Reviewed", REVIEW, s.id, "primary")]},
    ]


def approver_message(status: RequestStatus) -> tuple[str, list[Block]]:
    """The approvers' channel message; buttons only while someone must decide."""
    s = status
    title = f"{s.requester_name or s.requester} requests `{s.role}` on `{s.instance}` for {duration_of(s)}"
    text = f"Access request: {title}"
    head = "*Access request*"
    if s.break_glass:
        head = ":rotating_light: *BREAK-GLASS (emergency access, granted without approval)*"
        text = f"BREAK-GLASS: {title}"
    blocks: list[Block] = [
        section(
            f"{head} from {who(s)}: role `{escape(s.role)}` on `{escape(s.instance)}` for *{duration_of(s)}*"
        ),
        _fields(s),
        *_privileges(s),
        *_warnings(s),
        *_rule_lines(s),
    ]
    if s.break_glass:
        blocks += _review_blocks(s)
    if s.state == RequestState.PENDING and not s.auto_approved:
        blocks.append(
            {
                "type": "actions",
                "block_id": "decide",
                "elements": [
                    button("Approve", APPROVE, s.id, "primary"),
                    button("Deny", DENY, s.id, "danger"),
                    *([button("Details", PRIVILEGES, s.id)] if s.privileges_detail else []),
                ],
            }
        )
        if s.on_call_detail:  # e.g. the PagerDuty check could not be done: say so
            blocks.append(context(f":warning: {escape(s.on_call_detail)}"))
        blocks.append(context(f"Approvers: {escape(', '.join(s.approvers))} · request `{escape(s.id)}`"))
    else:
        lines = [_decided_line(s)]
        outcome = _outcome_line(s)
        if outcome:
            lines.append(outcome)
        blocks.append(section("\n".join(lines)))
        blocks.append(context(f"request `{escape(s.id)}`"))
    return text, blocks


def requester_message(status: RequestStatus) -> tuple[str, list[Block]]:
    """The requester's confirmation DM, kept current until the request is decided."""
    s = status
    what = f"role `{escape(s.role)}` on `{escape(s.instance)}` for *{duration_of(s)}*"
    if s.state == RequestState.PENDING:
        text = f"Your request for {s.role} on {s.instance} is waiting for approval"
        head = f":hourglass_flowing_sand: Your request for {what} is waiting for approval."
    elif s.auto_approved:
        text = f"Your request for {s.role} on {s.instance} was auto-approved"
        head = f":robot_face: Your request for {what} was auto-approved: you are on call."
    else:
        text = f"Your request for {s.role} on {s.instance}: {label(s.state)}"
        head = f"Your request for {what}.\n{_decided_line(s)}"
    blocks: list[Block] = [section(head), _fields(s), *_warnings(s)]
    if s.state == RequestState.PENDING:
        blocks.append(
            {
                "type": "actions",
                "block_id": "cancel",
                "elements": [button("Cancel request", CANCEL, s.id)],
            }
        )
    blocks.append(context(f"request `{escape(s.id)}`"))
    return text, blocks


def grant_message(status: RequestStatus) -> tuple[str, list[Block]]:
    """Access granted: login, role, instance, exact expiry, and Relinquish while it lasts."""
    s = status
    expiry = slack_date(s.expires_at) if s.expires_at else "?"
    if s.state == RequestState.GRANTED:
        text = f"Access granted: {s.role} on {s.instance} as {s.db_user}"
        lines = [
            f":unlock: *Access granted*: role `{escape(s.role)}` on `{escape(s.instance)}`",
            f"Log in as `{escape(s.db_user or '?')}`. Access ends {expiry}.",
        ]
    else:
        text = f"Access to {s.role} on {s.instance} ended"
        ended = {
            RequestState.EXPIRED: "expired",
            RequestState.RELINQUISHED: "was relinquished",
            RequestState.REVOKING: "is being revoked",
        }.get(s.state, label(s.state))
        lines = [
            f":lock: Your access to role `{escape(s.role)}` on `{escape(s.instance)}` {ended}.",
            f"It was granted to `{escape(s.db_user or '?')}` until {expiry}.",
        ]
    if s.auto_approved:
        lines.append(f":robot_face: Auto-approved: {escape(s.on_call_detail)}.")
    elif s.decided_by:
        lines.append(f"Approved by {escape(s.decided_by)}.")
    blocks: list[Block] = [section("\n".join(lines)), *_warnings(s)]
    if s.state == RequestState.GRANTED:
        blocks.append(
            {
                "type": "actions",
                "block_id": "relinquish",
                "elements": [relinquish_button(s.id), button("Extend", EXTEND, s.id)],
            }
        )
    blocks.append(context(f"request `{escape(s.id)}`"))
    return text, blocks


def expiry_warning(s: RequestStatus, now: datetime) -> tuple[str, list[Block]]:
    """Sent once per expiry time, that long before it: Extend or Relinquish."""
    assert s.expires_at is not None
    minutes = max(1, round((s.expires_at - now).total_seconds() / 60))
    text = f"{s.role} on {s.instance} expires at {s.expires_at:%H:%M} UTC (in {minutes} minutes)"
    line = (
        f":hourglass_flowing_sand: `{escape(s.role)}` on `{escape(s.instance)}` expires "
        f"{slack_date(s.expires_at)} (in {minutes} minutes)"
    )
    actions: Block = {
        "type": "actions",
        "block_id": "expiring",
        "elements": [button("Extend", EXTEND, s.id, "primary"), relinquish_button(s.id)],
    }
    return text, [section(line), actions]


def extension_message(s: RequestStatus) -> tuple[str, list[Block]]:
    """The latest extension in the approvers' thread: the ask, then how it was decided."""
    ext = s.extensions[-1]
    reason = f" ({ext.reason})" if ext.reason else ""
    text = f"{s.requester_name or s.requester} asks for {format_duration(ext.added)} more on {s.role}{reason}"
    lines = [f":hourglass: {escape(text)}"]
    if s.approvals_required > 1:
        done = ", ".join(escape(a.by) for a in ext.approvals) or "none yet"
        lines.append(f"{len(ext.approvals)} of {s.approvals_required} approvals: {done}")
    blocks: list[Block] = [section("\n".join(lines))]
    if ext.state == "pending":
        blocks.append(
            {
                "type": "actions",
                "block_id": "extension",
                "elements": [
                    button("Approve", APPROVE_EXTENSION, s.id, "primary"),
                    button("Deny", DENY_EXTENSION, s.id, "danger"),
                ],
            }
        )
    else:
        verdict = {
            "approved": ":white_check_mark: Approved",
            "denied": ":x: Denied",
            "expired": ":lock: Ended with the grant",
            "relinquished": ":lock: Ended: relinquished",
        }[ext.state]
        by = f" by {escape(ext.decided_by)}" if ext.decided_by and ext.state in ("approved", "denied") else ""
        until = (
            f"; access now ends {slack_date(s.expires_at)}"
            if ext.state == "approved" and s.expires_at
            else ""
        )
        blocks.append(context(f"{verdict}{by}{until}"))
    return text, blocks


def reminder(s: RequestStatus, mentions: list[str], waited: str) -> tuple[str, list[Block]]:
    what = "an extension" if s.state == RequestState.GRANTED else "a decision"
    text = f"Still waiting for {what} on {s.requester}'s request for {s.role} ({waited})"
    return text, [section(f"{' '.join(mentions)} :bell: {escape(text)}".strip())]


def relinquish_button(request_id: str) -> dict[str, Any]:
    b = button("Relinquish now", RELINQUISH, request_id, "danger")
    b["confirm"] = {
        "title": plain("Relinquish access?"),
        "text": plain("Your membership is revoked at once and your open sessions are ended."),
        "confirm": plain("Relinquish"),
        "deny": plain("Keep it"),
        "style": "danger",
    }
    return b


def refused_dm(status: RequestStatus, detail: str) -> tuple[str, list[Block]]:
    """A decision the workflow did not count, told to whoever made it in Slack."""
    signal, _, why = detail.partition(": ")
    text = f"Your {signal} of {status.role} for {status.requester} did not count: {why}"
    line = (
        f":no_entry: Your *{escape(signal)}* of `{escape(status.role)}` on `{escape(status.instance)}` "
        f"for {escape(status.requester)} did not count: {escape(why)}"
    )
    return text, [section(line)]


def outcome_dm(status: RequestStatus, event: str) -> tuple[str, list[Block]] | None:
    """A new DM for final events, so the requester is notified (edits do not notify)."""
    s = status
    what = f"role `{escape(s.role)}` on `{escape(s.instance)}`"
    reason = f" ({escape(s.decision_reason)})" if s.decision_reason else ""
    texts = {
        "denied": (
            f"Your request was denied by {s.decided_by}",
            f":x: Your request for {what} was denied by {escape(s.decided_by or '?')}{reason}. "
            "Talk to an approver, or request again with more detail.",
        ),
        "timed_out": (
            "Your request timed out",
            f":alarm_clock: Nobody approved your request for {what} in time. "
            f"Request it again with `/p0 request`, or ask an approver ({escape(', '.join(s.approvers))}).",
        ),
        "failed": (
            "Your access could not be granted",
            f":warning: Your request for {what} was approved but the grant failed: "
            f"{escape(s.error or '?')}. Nothing was left behind; ask a DBA, then request again.",
        ),
        "rejected": (
            "Your request was not accepted",
            f":no_entry_sign: Your request for {what} was not accepted: {escape(s.error or '?')}",
        ),
        "expired": (
            "Your access has expired",
            f":lock: Your access to {what} has expired and was revoked. "
            "Need more time? Request it again with `/p0 request`.",
        ),
        "relinquished": (
            "You relinquished your access",
            f":lock: You relinquished your access to {what}; it has been revoked.",
        ),
    }
    if event not in texts:
        return None
    text, body = texts[event]
    return text, [section(body), context(f"request `{escape(s.id)}`")]


def revoke_alert(status: RequestStatus, detail: str) -> tuple[str, list[Block]]:
    s = status
    text = f"ALERT: revoking {s.role} from {s.db_user} on {s.instance} keeps failing"
    return text, [
        section(
            f":rotating_light: *Revoke keeps failing*: role `{escape(s.role)}` from "
            f"`{escape(s.db_user or '?')}` on `{escape(s.instance)}`. rolecall keeps retrying; "
            "please check the database."
        ),
        context(escape(detail) or "no detail"),
        context(f"request `{escape(s.id)}`"),
    ]


# ---- modals ------------------------------------------------------------------------------


def duration_choices(inst: Instance) -> list[timedelta]:
    choices = [d for d in DURATION_CHOICES if d <= inst.max_duration]
    for extra in (inst.default_duration, inst.max_duration):
        if extra not in choices:
            choices.append(extra)
    return sorted(choices)


def offers_break_glass(inst: Instance) -> bool:
    """Whether the modal shows the break-glass checkbox: some role of `inst` allows it."""
    return bool(inst.break_glass) or any(r.break_glass for r in inst.rules)


def _role_block(selected: Instance, roles: list[str]) -> Block:
    """A plain select up to MAX_OPTIONS roles, a type-ahead past that, a warning for none."""
    if len(roles) > MAX_OPTIONS:
        return {
            "type": "input",
            "block_id": B_ROLE,
            "label": plain("Role name"),
            "element": {
                "type": "external_select",
                "action_id": ROLE_SELECT,
                "min_query_length": 1,
                "placeholder": plain("Type part of a role name"),
            },
            "hint": plain(f"{len(roles)} roles on this instance: type to find yours."),
        }
    if roles:
        return {
            "type": "input",
            "block_id": B_ROLE,
            "label": plain("Role name"),
            "element": {
                "type": "static_select",
                "action_id": "value",
                "placeholder": plain("Choose a role"),
                "options": [option(r, r) for r in roles],
            },
        }
    return section(
        f":warning: No requestable role exists on `{escape(selected.name)}` right now "
        "(or the instance could not be reached). Pick another instance or ask a DBA."
    )


def request_modal(
    instances: list[Instance],
    selected: Instance,
    roles: list[str],
    private_metadata: str = "",
) -> dict[str, Any]:
    """The /p0 request modal; changing the instance reloads the roles (a modal update).

    Up to MAX_OPTIONS instances or roles are a plain select; more are a type-ahead
    (external_select) answered by `listeners.options`, which finds the roles of the instance
    named in `private_metadata`.
    """
    chosen = option(selected.name, selected.name)
    inst_element: dict[str, Any] = {
        "type": "static_select",
        "action_id": INSTANCE_SELECT,
        "options": [option(i.name, i.name) for i in instances],
        "initial_option": chosen,
    }
    if len(instances) > MAX_OPTIONS:
        inst_element = {
            "type": "external_select",
            "action_id": INSTANCE_SELECT,
            "min_query_length": 0,
            "initial_option": chosen,
            "placeholder": plain("Type part of an instance name"),
        }
    blocks: list[Block] = [
        {
            "type": "input",
            "block_id": B_INSTANCE,
            "dispatch_action": True,
            "label": plain("PostgreSQL instance"),
            "element": inst_element,
        },
        {
            "type": "input",
            "block_id": B_KIND,
            "label": plain("Access type"),
            "element": {
                "type": "static_select",
                "action_id": "value",
                "options": [option("Role", "role")],
                "initial_option": option("Role", "role"),
            },
        },
    ]
    blocks.append(_role_block(selected, roles))
    durations = duration_choices(selected)
    blocks += [
        {
            "type": "input",
            "block_id": B_DURATION,
            "label": plain("Duration"),
            "element": {
                "type": "static_select",
                "action_id": "value",
                "options": [option(format_duration(d), format_duration(d)) for d in durations],
                "initial_option": option(
                    format_duration(selected.default_duration), format_duration(selected.default_duration)
                ),
            },
            "hint": plain(f"At most {format_duration(selected.max_duration)} on this instance."),
        },
        {
            "type": "input",
            "block_id": B_REASON,
            "optional": True,
            "label": plain("Reason"),
            "element": {
                "type": "plain_text_input",
                "action_id": "value",
                "multiline": True,
                "max_length": 1000,
                "placeholder": plain("What do you need it for? (ticket, incident...)"),
            },
        },
    ]
    if offers_break_glass(selected):
        blocks.append(
            {
                "type": "input",
                "block_id": B_BREAK_GLASS,
                "optional": True,
                "label": plain("Emergency access (break-glass)"),
                "element": {
                    "type": "checkboxes",
                    "action_id": "value",
                    "options": [
                        option("Emergency: grant at once, approvers review afterwards", BREAK_GLASS_ON)
                    ],
                },
                "hint": plain("Only for an incident; needs a reason. Approvers are alerted at once."),
            }
        )
    return {
        "type": "modal",
        "callback_id": REQUEST_MODAL,
        "title": plain("Request access", 24),
        "submit": plain("Request", 24),
        "close": plain("Cancel", 24),
        "private_metadata": private_metadata or selected.name,
        "blocks": blocks,
    }


def deny_modal(status: RequestStatus) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": DENY_MODAL,
        "title": plain("Deny request", 24),
        "submit": plain("Deny", 24),
        "close": plain("Back", 24),
        "private_metadata": status.id,
        "blocks": [
            section(
                f"Deny {who(status)}'s request for `{escape(status.role)}` on `{escape(status.instance)}`?"
            ),
            {
                "type": "input",
                "block_id": B_DENY_REASON,
                "optional": True,
                "label": plain("Reason (shown to the requester)"),
                "element": {
                    "type": "plain_text_input",
                    "action_id": "value",
                    "multiline": True,
                    "max_length": 500,
                },
            },
        ],
    }


def extension_choices(status: RequestStatus, left: timedelta) -> list[timedelta]:
    """How much longer: the usual steps, capped by what is left of the maximum."""
    steps = [timedelta(minutes=m) for m in (15, 30, 60, 120, 240, 480)]
    return [d for d in steps if d <= left] or ([left] if left > timedelta(0) else [])


def extend_modal(status: RequestStatus, left: timedelta, reason_required: bool) -> dict[str, Any]:
    """Extend: how much longer (capped by what is left) and a reason, required where the rule says."""
    options = [option(format_duration(d), format_duration(d)) for d in extension_choices(status, left)]
    return {
        "type": "modal",
        "callback_id": EXTEND_MODAL,
        "title": plain("Extend access", 24),
        "submit": plain("Extend", 24),
        "close": plain("Back", 24),
        "private_metadata": status.id,
        "blocks": [
            section(
                f"More time on `{escape(status.role)}` on `{escape(status.instance)}` "
                f"(now until {slack_date(status.expires_at) if status.expires_at else '?'}; "
                f"at most {format_duration(left)} more)"
            ),
            {
                "type": "input",
                "block_id": B_EXTEND_BY,
                "label": plain("How much longer"),
                "element": {
                    "type": "static_select",
                    "action_id": "value",
                    "options": options,
                    "initial_option": options[0],
                },
            },
            {
                "type": "input",
                "block_id": B_EXTEND_REASON,
                "optional": not reason_required,
                "label": plain("Reason"),
                "element": {"type": "plain_text_input", "action_id": "value", "max_length": 500},
            },
        ],
    }


def privileges_modal(status: RequestStatus) -> dict[str, Any]:
    """The Details modal: what the role grants, as snapshotted by the worker.

    The Slack app holds no database credentials: this shows the grouped list the check (or
    the grant's re-read) stored in the request, already cut to fit one section.
    """
    s = status
    detail = s.privileges_detail or "The privileges of this role were not read."
    return {
        "type": "modal",
        "title": plain("Role privileges", 24),
        "close": plain("Close", 24),
        "blocks": [
            section(f"What `{escape(s.role)}` on `{escape(s.instance)}` grants a member:"),
            section("```" + escape(detail) + "```"),
            context(f"Read by rolecall for request `{escape(s.id)}`; `rolecall explain` lists all."),
        ],
    }


def privileges_changed_message(status: RequestStatus, detail: str) -> tuple[str, list[Block]]:
    """The reply under the card when the role gained privileges before the grant."""
    s = status
    text = f"Grant held: {s.role} on {s.instance} gained privileges; approve again to grant"
    line = (
        f":warning: *Grant held, nothing was granted.* {escape(detail)}\n"
        f"The approvals were cleared: approve again on the card to grant what it shows now."
    )
    return text, [section(line)]


def help_blocks(command: str) -> tuple[str, list[Block]]:
    text = (
        f"*rolecall* lends PostgreSQL roles for a limited time.\n"
        f"• `{command} request`: ask for a role (a form opens); approvers get a message, "
        "you get a DM when access is granted, and it is revoked automatically when it expires.\n"
        f"• `{command} list`: your pending and active requests.\n"
        f"• `{command} help`: this message.\n"
        "The *Home* tab of this app shows your grants (with *Relinquish*) and, for approvers, "
        "the requests waiting for you."
    )
    return "rolecall help", [section(text)]


def _row(r: Listed, extra: str = "") -> str:
    state = RequestState(r.state) if r.state in {s.value for s in RequestState} else None
    icon = _ICON[state] if state else ":grey_question:"
    base = f"{icon} `{escape(r.role)}` on `{escape(r.instance)}` · {escape(r.state.replace('_', ' '))}"
    if state == RequestState.GRANTED and r.expires_at:
        base += f" until {slack_date(r.expires_at)}"
    elif state == RequestState.PENDING:
        base += f" · asked {slack_date(r.started)}"
    if r.break_glass:
        base += " · :rotating_light: break-glass"
    return base + extra


def _shown(page: Page, what: str) -> str:
    """ "Showing 25 of 300 …": said whenever a list is longer than what is shown."""
    return f"Showing {len(page.rows)} of {page.total} {what}." if page.total > len(page.rows) else ""


def list_blocks(page: Page) -> tuple[str, list[Block]]:
    if not page.rows:
        return "You have no pending or active requests.", [
            section("You have no pending or active requests. Ask with `/p0 request`.")
        ]
    blocks: list[Block] = [section(f"*Your pending and active requests* ({page.total})")]
    for r in page.rows[:40]:
        blocks.append(section(_row(r)))
    more = _shown(page, "requests (the newest first); `rolecall list` shows them all")
    if more:
        blocks.append(context(more))
    return f"You have {page.total} pending or active request(s).", blocks


def refused_home(text: str) -> dict[str, Any]:
    """The App Home of someone rolecall does not act for: only why."""
    return {
        "type": "home",
        "blocks": [{"type": "header", "text": plain("Your database access")}, section(text)],
    }


def home_view(grants: Page, pending: Page, to_approve: Page, page_number: int = 1) -> dict[str, Any]:
    """The App Home, from the visibility store: each list's count and its first page.

    `to_approve` may be any page of its list (`page_number`); "Next page" carries the token of
    the following one. Slack allows 100 blocks: 12 + 12 + 25 * 2 of them at most here.
    """
    blocks: list[Block] = [
        {"type": "header", "text": plain("Your database access")},
    ]
    if grants.rows:
        for r in grants.rows[:10]:
            blocks.append({**section(_row(r)), "accessory": relinquish_button(r.id)})
        if _shown(grants, "grants"):
            blocks.append(context(_shown(grants, "grants")))
    else:
        blocks.append(context("No active grants. Use `/p0 request` to ask for a role."))
    blocks += [{"type": "divider"}, {"type": "header", "text": plain("Your pending requests")}]
    if pending.rows:
        for r in pending.rows[:10]:
            blocks.append({**section(_row(r)), "accessory": button("Cancel", CANCEL, r.id)})
        if _shown(pending, "pending requests"):
            blocks.append(context(_shown(pending, "pending requests")))
    else:
        blocks.append(context("Nothing pending."))
    if to_approve.total:
        blocks += [
            {"type": "divider"},
            {"type": "header", "text": plain(f"Waiting for your approval ({to_approve.total})")},
        ]
        for r in to_approve.rows[:25]:
            blocks.append(section(f"{escape(r.requester)}: {_row(r)}"))
            blocks.append(
                {
                    "type": "actions",
                    "elements": [
                        button("Approve", APPROVE, r.id, "primary"),
                        button("Deny", DENY, r.id, "danger"),
                    ],
                }
            )
        first = (page_number - 1) * 25 + 1
        last = first + len(to_approve.rows[:25]) - 1
        blocks.append(context(f"{first} to {last} of {to_approve.total}, the newest first"))
        if to_approve.next_page and len(to_approve.next_page) <= 1900:
            value = f"{page_number + 1}:{to_approve.next_page}"
            blocks.append({"type": "actions", "elements": [button("Next page", HOME_MORE, value)]})
    return {"type": "home", "blocks": blocks[:100]}


def reconcile_message(report: ReconcileReport) -> tuple[str, list[Block]]:
    """What the reconciler revoked (or would), and what it found granted outside rolecall."""
    verb = "Would revoke" if report.dry_run else "Revoked"
    done = report.stranded if report.dry_run else report.revoked
    text = f"rolecall reconcile on {report.instance}: {len(done)} stranded grant(s)"
    lines = [f":rotating_light: *Reconcile* on `{escape(report.instance)}`"]
    lines += [
        f"• {verb} `{escape(g.role)}` from `{escape(g.login)}`: request `{escape(g.request_id)}` "
        f"({escape(g.execution)}) expired {slack_date(g.expires_at)} and never proved its revoke"
        for g in done[:20]
    ]
    lines += [f"• :warning: {escape(e)}" for e in report.errors[:10]]
    blocks: list[Block] = [section("\n".join(lines))]
    outside = [*report.unproven, *report.foreign]
    if outside:
        held = ", ".join(f"`{escape(m.role)}` → `{escape(m.member)}`" for m in outside[:10])
        blocks.append(context(f"Granted outside rolecall's requests (left alone): {held}"))
    return text, blocks
