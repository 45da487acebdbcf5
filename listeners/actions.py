"""Buttons: approve, deny (opens the reason modal), cancel, relinquish, review, the instance picker.

Buttons carry only the request ID. The workflow alone decides: its decide update refuses with
one clear line (told to the clicker as an ephemeral message) or answers with a refusal it
recorded (a race lost to another click), which is told the same way.
"""

from __future__ import annotations

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
from rolecall.policy import refusal
from rolecall.slack_identity import Identity

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
    """Decide, and tell the clicker if it did not count (refused, or lost to another click)."""
    rid = str(body["actions"][0]["value"]) if body.get("actions") else str(body["view"]["private_metadata"])
    try:
        answer = await operations.decide(deps.temporal, rid, signal, decision(deps, who, rid, signal, reason))
    except RolecallError as e:
        await tell(deps, body, f":no_entry_sign: {e}")
        return
    if answer.refused:
        await tell(deps, body, f":no_entry_sign: {answer.refused}")
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
