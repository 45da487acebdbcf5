"""Modal submissions: the access request, and a denial's reason.

A submission is checked here first (the modal's values may be stale or hand-made) and answered
in the modal; then the request's workflow is started and its check awaited for up to
`SUBMIT_WAIT`, so a refusal shows under the field it concerns. A slower check closes the modal
and answers by DM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext

from listeners.common import ACTIVE, checked, chosen_role, decision, me, value
from listeners.deps import Deps
from rolecall import contract, operations
from rolecall import slack_blocks as kit
from rolecall.config import Instance
from rolecall.durations import format_duration, parse_duration
from rolecall.errors import AlreadyRequested, Field, RolecallError
from rolecall.models import AccessRequest, RequestStatus
from rolecall.rules import check_reason
from rolecall.slack_identity import Identity

log = logging.getLogger("rolecall.slack_app")

# How long a submission may wait for the request's check before answering Slack anyway.
SUBMIT_WAIT = 2.0


def register(app: AsyncApp, deps: Deps) -> None:
    @app.view(kit.REQUEST_MODAL)
    async def on_request_submit(ack: Any, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await submit_request(deps, ack, body, context)

    @app.view(kit.EXTEND_MODAL)
    async def on_extend_submit(ack: Any, body: dict[str, Any], context: AsyncBoltContext) -> None:
        rid = str(body["view"]["private_metadata"])
        values = body["view"]["state"]["values"]
        reason = value(values, kit.B_EXTEND_REASON).strip()
        try:
            by = parse_duration(value(values, kit.B_EXTEND_BY))
            signed = decision(deps, me(context), rid, "extend", reason)
            answer = await operations.extend(deps.temporal, rid, signed, by)
        except (RolecallError, ValueError) as e:
            await ack(response_action="errors", errors={kit.B_EXTEND_BY: str(e)})
            return
        await ack()
        log.info("extension of %s: %s", rid, answer.message)

    @app.view(kit.DENY_MODAL)
    async def on_deny_submit(ack: Any, body: dict[str, Any], context: AsyncBoltContext) -> None:
        rid = str(body["view"]["private_metadata"])
        reason = value(body["view"]["state"]["values"], kit.B_DENY_REASON).strip()
        signed = decision(deps, me(context), rid, contract.DENY, reason)
        try:
            # The modal must be acknowledged within 3 s: a shorter wait for the answer.
            answer = await operations.decide(deps.temporal, rid, contract.DENY, signed, wait=2.0)
        except RolecallError as e:
            await ack(response_action="errors", errors={kit.B_DENY_REASON: str(e)})
            return
        if answer.refused:
            await ack(response_action="errors", errors={kit.B_DENY_REASON: answer.refused})
            return
        await ack()


def read_form(deps: Deps, values: dict[str, Any]) -> tuple[Instance | None, timedelta | None, dict[str, str]]:
    """The chosen instance and duration, and the errors to show under each field."""
    errors: dict[str, str] = {}
    chosen = value(values, kit.B_INSTANCE, kit.INSTANCE_SELECT)
    inst = deps.config.get().instances.get(chosen)
    role = chosen_role(values)
    duration: timedelta | None = None
    if inst is None:
        # A stale modal (the instance was renamed or removed since it opened) or a made-up one.
        errors[kit.B_INSTANCE] = (
            f"Instance {chosen!r} is not configured (any more): choose another."
            if chosen
            else "Choose one of the configured instances."
        )
        return None, None, errors
    try:
        duration = parse_duration(value(values, kit.B_DURATION))
        if duration > inst.max_duration:
            errors[kit.B_DURATION] = (
                f"{format_duration(duration)} is over the maximum of "
                f"{format_duration(inst.max_duration)} on {inst.name}."
            )
    except ValueError as e:
        errors[kit.B_DURATION] = str(e)
    if not role:
        errors[kit.B_ROLE if kit.B_ROLE in values else kit.B_INSTANCE] = (
            f"No requestable role on {inst.name}: choose another instance."
        )
    elif not inst.is_requestable(role):
        errors[kit.B_ROLE] = f"{role} is no longer requestable on {inst.name}."
    return inst, duration, errors


async def submit_request(deps: Deps, ack: Any, body: dict[str, Any], context: AsyncBoltContext) -> None:
    started = time.monotonic()
    values = body["view"]["state"]["values"]
    user_id = body["user"]["id"]
    inst, duration, errors = read_form(deps, values)
    if errors:
        await ack(response_action="errors", errors=errors)
        return
    assert inst is not None and duration is not None
    role = chosen_role(values)
    reason = value(values, kit.B_REASON).strip()
    break_glass = kit.BREAK_GLASS_ON in checked(values, kit.B_BREAK_GLASS)
    who = me(context)
    try:
        # Before anything starts: allowed_email_domains, and what the role's rule demands.
        inst.check_requester(who.email)
        check_reason(inst.rule_for(role, deps.config.get().pagerduty), reason, break_glass)
    except RolecallError as e:
        await ack(response_action="errors", errors={error_block(e): str(e)[:2000]})
        return
    # An open request for the same role: answer in the modal without starting anything.
    if await _already_open(deps, ack, inst, role, who):
        return
    req = AccessRequest(
        requester=who.email,
        requester_name=who.name,
        instance=inst.name,
        role=role,
        duration=duration,
        reason=reason,
        source="slack",
        slack_user_id=user_id,
        break_glass=break_glass,
    )
    task = asyncio.ensure_future(operations.submit(deps.temporal, req, deps.settings.task_queue))
    budget = max(0.2, SUBMIT_WAIT - (time.monotonic() - started))
    done, _ = await asyncio.wait({task}, timeout=budget)
    if not done:
        # The check is slow (database far away): close the modal, answer by DM.
        await ack()
        deps.later(_finish_submit(deps, task, user_id))
        return
    err = task.exception()
    if isinstance(err, RolecallError):
        await ack(response_action="errors", errors={error_block(err): str(err)[:2000]})
        return
    await ack()
    if err is not None:
        log.error("submit failed: %r", err)
        await deps.web.chat_postMessage(channel=user_id, text=f"Your request could not be started: {err}")


async def _already_open(deps: Deps, ack: Any, inst: Instance, role: str, who: Identity) -> bool:
    with contextlib.suppress(RolecallError):
        existing = await operations.get_status(deps.temporal, contract.request_id(inst.name, role, who.email))
        if existing.state in ACTIVE:
            await ack(
                response_action="errors",
                errors={kit.B_ROLE: f"You already have a {existing.state.value} request for {role}."},
            )
            return True
    return False


async def _finish_submit(deps: Deps, task: asyncio.Future[RequestStatus], user_id: str) -> None:
    try:
        await task
    except AlreadyRequested as e:
        await deps.web.chat_postMessage(channel=user_id, text=f":no_entry_sign: {e}")
    except RolecallError as e:
        await deps.web.chat_postMessage(
            channel=user_id, text=f":no_entry_sign: Your request was not accepted: {e}"
        )


# The modal field each kind of refusal is shown under (`RolecallError.field`).
FIELD_BLOCKS: dict[Field, str] = {
    "instance": kit.B_INSTANCE,
    "role": kit.B_ROLE,
    "duration": kit.B_DURATION,
    "reason": kit.B_REASON,
    "break_glass": kit.B_BREAK_GLASS,
}


def error_block(err: RolecallError) -> str:
    """The modal field a refusal is shown under: the one its type says it is about."""
    return FIELD_BLOCKS[err.field]
