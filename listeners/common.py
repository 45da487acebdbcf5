"""Helpers more than one kind of listener needs: who acts, answers, role lists, request lists."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from slack_bolt.async_app import AsyncBoltContext
from slack_sdk.errors import SlackApiError

from listeners.deps import Deps
from rolecall import operations
from rolecall import slack_blocks as kit
from rolecall.config import Instance
from rolecall.errors import RolecallError
from rolecall.models import Decision, Page, RequestState, RequestStatus
from rolecall.policy import VERIFIED
from rolecall.roles import names as role_names
from rolecall.signing import sign
from rolecall.slack_identity import Identity

log = logging.getLogger("rolecall.slack_app")

ROLE_LIST_TIMEOUT = 1.5
# A status query waits for a worker; lists skip requests that do not answer in time.
STATUS_TIMEOUT = 1.5
# Rows per page of a list in Slack (App Home, `/p0 list`).
PAGE_SIZE = 25
ACTIVE = (RequestState.PENDING, RequestState.APPROVED, RequestState.GRANTED, RequestState.REVOKING)


def me(context: AsyncBoltContext) -> Identity:
    """The identity `members_only` put in the context; a listener never runs without it."""
    identity = context.get("identity")
    if not isinstance(identity, Identity):
        raise RuntimeError("a listener ran without members_only's identity")
    return identity


def value(values: dict[str, Any], block: str, action: str = "value") -> str:
    """What a modal's input holds: the selected option's value, or the typed text."""
    item = (values.get(block) or {}).get(action) or {}
    if item.get("selected_option"):
        return str(item["selected_option"]["value"])
    return str(item.get("value") or "")


def chosen_role(values: dict[str, Any]) -> str:
    """The role in the request modal: a plain select, or the type-ahead of a long list."""
    return value(values, kit.B_ROLE) or value(values, kit.B_ROLE, kit.ROLE_SELECT)


def checked(values: dict[str, Any], block: str, action: str = "value") -> list[str]:
    """The values of a modal's ticked checkboxes."""
    item = (values.get(block) or {}).get(action) or {}
    return [str(o["value"]) for o in item.get("selected_options") or []]


def origin(deps: Deps) -> str:
    """What the worker will record our decisions as: verified only when we sign them."""
    return VERIFIED if deps.decision_key else "unverified"


def decision(deps: Deps, who: Identity, request_id: str, signal: str, reason: str = "") -> Decision:
    """A decision by `who`, signed for this request and signal when the app has the key."""
    d = Decision(actor=who.email, reason=reason, via="slack", slack_user_id=who.user_id)
    if deps.decision_key is None:
        return d
    return sign(deps.decision_key, request_id, signal, d, datetime.now(UTC))


async def tell(deps: Deps, body: dict[str, Any], text: str) -> None:
    """An answer only the clicker sees: ephemeral in the channel, else a DM."""
    user = body["user"]["id"]
    channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
    if channel:
        try:
            await deps.web.chat_postEphemeral(channel=channel, user=user, text=text)
            return
        except SlackApiError as e:
            log.warning("ephemeral answer failed (%s); sending a DM", e.response.get("error"))
    await deps.web.chat_postMessage(channel=user, text=text)


# ---- role lists ------------------------------------------------------------------------------


async def existing_roles(deps: Deps, inst: Instance) -> list[str]:
    """Requestable roles that exist on the instance, from the worker's catalog workflow.

    The Slack app reads no database (it holds no DSN): the worker does, in workflows/catalog.py.
    When the catalog can't answer, the modal offers the exact names the config lists.
    """
    try:
        found = await operations.catalog_roles(deps.temporal, deps.settings.task_queue, inst.name)
    except Exception as e:  # no worker, or Temporal slow: the configured names still work
        log.warning("roles of instance %s could not be listed: %s", inst.name, e)
        return role_names(inst.roles)
    if not found.loaded:
        log.warning("roles of instance %s not listed yet: %s", inst.name, found.error or "no answer")
        return role_names(inst.roles)
    return found.roles


async def roles_of(deps: Deps, inst: Instance) -> list[str]:
    """The roles the request modal offers on `inst`, cached for a little while."""
    hit = deps.role_cache.get(inst.name)
    if hit is not None:
        return list(hit)
    try:
        roles = await asyncio.wait_for(existing_roles(deps, inst), ROLE_LIST_TIMEOUT + 0.5)
    except TimeoutError:
        log.warning("listing roles of %s took too long; showing the configured names", inst.name)
        return role_names(inst.roles)
    deps.role_cache.put(inst.name, roles)
    return roles


# ---- request lists ---------------------------------------------------------------------------


async def status_or_none(deps: Deps, rid: str) -> RequestStatus | None:
    """The status, or None when it is unknown or cannot be had quickly (no worker)."""
    try:
        return await asyncio.wait_for(operations.get_status(deps.temporal, rid), STATUS_TIMEOUT)
    except (RolecallError, TimeoutError):
        return None


async def own_requests(deps: Deps, email: str, states: tuple[RequestState, ...] = ACTIVE) -> Page:
    """The requester's own requests in `states`, from the visibility store (no status queries)."""
    return await operations.page_requests(
        deps.temporal, states=[s.value for s in states], requester=email, page_size=PAGE_SIZE
    )


async def waiting_for(deps: Deps, email: str, page: str | None = None) -> Page:
    """Pending requests `email` approves, other than their own: one page and the count.

    Read from the visibility store (RolecallApprovers, kept by the workflow), so an approver of
    thousands of requests costs two visibility calls and no status query.
    """
    return await operations.page_requests(
        deps.temporal,
        states=[RequestState.PENDING.value],
        approver=email,
        not_requester=email,
        page_size=PAGE_SIZE,
        page=page,
    )
