"""Buttons: approve, deny (opens the reason modal), cancel, relinquish, review, the instance picker.

Buttons carry only the request ID. The clicker's right to decide is checked here with
`rolecall.policy.refusal` for a clear ephemeral answer, and again in the workflow, which alone
decides; a refusal the workflow records (a race with another click) is told to the clicker.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_sdk.errors import SlackApiError

from listeners.common import decision, me, origin, roles_of, status_or_none, tell, value
from listeners.deps import Deps
from listeners.events import publish_home
from rolecall import contract, operations
from rolecall import slack_blocks as kit
from rolecall.errors import RolecallError
from rolecall.models import RequestState
from rolecall.policy import DECISIONS, refusal
from rolecall.slack_identity import Identity

# How long a click waits to see whether the workflow took its decision or refused it.
CONFIRM_WAIT = 3.0


# Buttons that are one decision each: (action id, signal, reason recorded with it).
_DECISION_BUTTONS = [
    (kit.APPROVE, contract.APPROVE, ""),
    (kit.CANCEL, contract.CANCEL, ""),
    (kit.RELINQUISH, contract.RELINQUISH, "relinquished in Slack"),
    (kit.REVIEW, contract.REVIEW, "reviewed in Slack"),
    (kit.APPROVE_EXTENSION, contract.APPROVE_EXTENSION, ""),
    (kit.DENY_EXTENSION, contract.DENY_EXTENSION, ""),
]


def _decision_listener(deps: Deps, signal: str, reason: str) -> Any:
    async def on_click(ack: Any, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await ack()
        await decide(deps, body, me(context), signal, reason=reason)

    return on_click


def register(app: AsyncApp, deps: Deps) -> None:
    for action_id, signal, reason in _DECISION_BUTTONS:
        app.action(action_id)(_decision_listener(deps, signal, reason))

    @app.action(kit.DENY)
    async def on_deny_click(ack: Any, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await ack()
        await open_deny_modal(deps, body, me(context))

    @app.action(kit.EXTEND)
    async def on_extend_click(ack: Any, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await ack()
        await open_extend_modal(deps, body, me(context))

    @app.action(kit.HOME_MORE)
    async def on_home_page(ack: Any, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await ack()
        number, _, token = str(body["actions"][0]["value"]).partition(":")
        try:
            await publish_home(deps, me(context), token or None, int(number) if number.isdigit() else 1)
        except RolecallError as e:
            await tell(deps, body, f":no_entry_sign: {e}")

    @app.action(kit.PRIVILEGES)
    async def on_privileges(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        await open_privileges_modal(deps, body)

    @app.action(kit.INSTANCE_SELECT)
    async def on_instance_change(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        await show_instance(deps, body["view"])


async def decide(deps: Deps, body: dict[str, Any], who: Identity, signal: str, reason: str = "") -> None:
    """Pre-check, signal, then confirm the workflow took it; explain any refusal."""
    rid = str(body["actions"][0]["value"]) if body.get("actions") else str(body["view"]["private_metadata"])
    email = who.email
    try:
        before = await operations.decide(deps.temporal, rid, signal, decision(deps, who, rid, signal, reason))
    except RolecallError as e:
        await tell(deps, body, f":no_entry_sign: {e}")
        return
    # The workflow re-checks; if it refused (a race with another click), say why.
    deadline = time.monotonic() + CONFIRM_WAIT
    while time.monotonic() < deadline:
        status = await operations.get_status(deps.temporal, rid)
        mine = [r for r in status.refused[len(before.refused) :] if r.actor == email and r.signal == signal]
        if mine:
            await tell(deps, body, f":no_entry_sign: {mine[-1].why}")
            break
        if signal in DECISIONS and status.state != RequestState.PENDING:
            if status.decided_by != email:
                # Someone else's decision landed first; ours was or will be refused.
                why = (
                    refusal(signal, email, status, origin(deps)) or f"already decided by {status.decided_by}"
                )
                await tell(deps, body, f":no_entry_sign: {why}")
            break
        if signal == contract.RELINQUISH and status.state != RequestState.GRANTED:
            break
        if signal == contract.APPROVE and any(a.by == email for a in status.approvals):
            break  # one of N approvals counted: the card shows the progress
        if signal == contract.REVIEW and status.reviewed_by:
            if status.reviewed_by != email:
                await tell(deps, body, f":no_entry_sign: already reviewed by {status.reviewed_by}")
            break
        await asyncio.sleep(0.1)
    if (body.get("view") or {}).get("type") == "home":
        await publish_home(deps, who)


async def open_deny_modal(deps: Deps, body: dict[str, Any], who: Identity) -> None:
    """Deny asks for a reason first: pre-check, then open the modal (trigger_id lives ~3 s)."""
    rid = str(body["actions"][0]["value"])
    status = await status_or_none(deps, rid)
    if status is None:
        await tell(deps, body, f":no_entry_sign: no request with id {rid!r}")
        return
    why = refusal(contract.DENY, who.email, status, origin(deps))
    if why:
        await tell(deps, body, f":no_entry_sign: {why}")
        return
    await deps.web.views_open(trigger_id=body["trigger_id"], view=kit.deny_modal(status))


async def open_extend_modal(deps: Deps, body: dict[str, Any], who: Identity) -> None:
    """Extend: a stale button (the grant ended) or someone else's gets one line, nothing opens."""
    rid = str(body["actions"][0]["value"])
    status = await status_or_none(deps, rid)
    if status is None:
        await tell(deps, body, f":no_entry_sign: this access has ended (request {rid})")
        return
    if who.email != status.requester:
        await tell(
            deps, body, f":no_entry_sign: only the requester ({status.requester}) can extend this access"
        )
        return
    if status.state != RequestState.GRANTED or status.expires_at is None or status.granted_at is None:
        await tell(
            deps, body, f":no_entry_sign: only granted access can be extended; this is {status.state.value}"
        )
        return
    inst = deps.config.get().instances.get(status.instance)
    rule = inst.rule_for(status.role, deps.config.get().pagerduty) if inst else None
    cap = (rule.max_total_duration or rule.max_duration) if rule else timedelta(0)
    left = status.granted_at + cap - status.expires_at
    if left <= timedelta(0):
        await tell(deps, body, ":no_entry_sign: this access already lasts as long as it may in all")
        return
    required = bool(rule and (rule.require_reason or rule.reason_pattern))
    await deps.web.views_open(trigger_id=body["trigger_id"], view=kit.extend_modal(status, left, required))


async def open_privileges_modal(deps: Deps, body: dict[str, Any]) -> None:
    """The card's Details: the grouped list the worker stored in the request (no database read)."""
    rid = str(body["actions"][0]["value"])
    status = await status_or_none(deps, rid)
    if status is None:
        await tell(deps, body, f":no_entry_sign: no request with id {rid!r}")
        return
    await deps.web.views_open(trigger_id=body["trigger_id"], view=kit.privileges_modal(status))


async def show_instance(deps: Deps, view: dict[str, Any]) -> None:
    """Another instance picked in the request modal: offer its roles and durations."""
    chosen = value(view["state"]["values"], kit.B_INSTANCE, kit.INSTANCE_SELECT)
    cfg = deps.config.get()
    inst = cfg.instances.get(chosen)
    if inst is None:
        return
    roles = await roles_of(deps, inst)
    modal = kit.request_modal(list(cfg.instances.values()), inst, roles)
    try:
        await deps.web.views_update(view_id=view["id"], hash=view.get("hash"), view=modal)
    except SlackApiError as e:
        if e.response.get("error") != "hash_conflict":
            raise
