"""Who may act from Slack: every request passes `members_only` before any listener runs.

Only a full member of our workspace with a visible email (`rolecall.slack_identity` says who
that is, from users.info cached for a minute) reaches a listener, with their `Identity` in the
context; anyone else gets one clear line, answered the way that kind of request can be, and
nothing starts. `/p0 help` acts for nobody and is shown to anyone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_bolt.response import BoltResponse

from listeners.common import tell
from listeners.deps import Deps
from rolecall import slack_blocks as kit
from rolecall.slack_identity import NO_EMAIL, Identity, Refusal, origin_of

# Sub-commands that act for someone; the others only show the help text.
ACTING_COMMANDS = ("request", "list")


def register(app: AsyncApp, deps: Deps) -> None:
    @app.middleware
    async def members_only(
        body: dict[str, Any], context: AsyncBoltContext, next: Callable[[], Awaitable[None]]
    ) -> BoltResponse | None:
        """Only full members of our workspace reach a listener; the rest are told why."""
        user_id = actor(body)
        if user_id is None or only_help(body):
            await next()
            return None
        verdict = await deps.identity.identify(user_id, origin_of(body))
        if isinstance(verdict, Identity):
            context["identity"] = verdict
            await next()
            return None
        return turn_away(deps, body, context, verdict)


def actor(body: dict[str, Any]) -> str | None:
    """The Slack user a command, interaction or event is from (None: nobody acts)."""
    user = body.get("user")
    if isinstance(user, dict) and user.get("id"):
        return str(user["id"])
    if body.get("command") and body.get("user_id"):
        return str(body["user_id"])
    event = body.get("event")
    if (
        body.get("type") == "event_callback"
        and isinstance(event, dict)
        and isinstance(event.get("user"), str)
    ):
        return str(event["user"])
    return None


def only_help(body: dict[str, Any]) -> bool:
    """`/p0 help` (or a typo): shows the commands to anyone and acts for nobody."""
    if not body.get("command"):
        return False
    words = str(body.get("text") or "").strip().split()
    return (words[0].lower() if words else "help") not in ACTING_COMMANDS


def turn_away(deps: Deps, body: dict[str, Any], context: AsyncBoltContext, no: Refusal) -> BoltResponse:
    """Answer a refusal the way this kind of request can be answered; start nothing."""
    text = NO_EMAIL if no.reason == NO_EMAIL else f":no_entry_sign: {kit.escape(no.reason)}"
    kind = "command" if body.get("command") else str(body.get("type") or "")
    if kind == "view_submission":
        errors = {_first_input(body.get("view") or {}): no.short}
        return BoltResponse(status=200, body={"response_action": "errors", "errors": errors})
    if kind == "block_suggestion":
        return BoltResponse(status=200, body={"options": []})
    if kind == "command" and context.respond is not None:
        deps.later(context.respond(text=text, response_type="ephemeral"))
    elif kind == "event_callback":
        event = body.get("event") or {}
        if event.get("type") == "app_home_opened" and event.get("tab", "home") == "home":
            deps.later(deps.web.views_publish(user_id=no.user_id, view=kit.refused_home(text)))
    elif kind in ("block_actions", "shortcut", "message_action"):
        deps.later(tell(deps, body, text))
    return BoltResponse(status=200, body="")


def _first_input(view: dict[str, Any]) -> str:
    for block in view.get("blocks") or []:
        if block.get("type") == "input" and block.get("block_id"):
            return str(block["block_id"])
    return next(iter((view.get("state") or {}).get("values") or {}), kit.B_INSTANCE)
