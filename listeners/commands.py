"""The slash command (`/p0` by default): `request` opens the modal, `list`, and `help`."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext

from listeners.common import me, own_requests, roles_of
from listeners.deps import Deps
from rolecall import slack_blocks as kit


def register(app: AsyncApp, deps: Deps) -> None:
    @app.command(deps.config.get().slack.command)
    async def on_command(ack: Any, command: dict[str, Any], respond: Any, context: AsyncBoltContext) -> None:
        await answer(deps, ack, command, respond, context)


async def answer(
    deps: Deps, ack: Any, command: dict[str, Any], respond: Any, context: AsyncBoltContext
) -> None:
    words = (command.get("text") or "").strip().split()
    sub = words[0].lower() if words else "help"
    if sub == "request":
        await ack()
        await open_request_modal(deps, command["trigger_id"])
    elif sub == "list":
        await ack()
        text, blocks = kit.list_blocks(await own_requests(deps, me(context).email))
        await respond(text=text, blocks=blocks, response_type="ephemeral")
    else:
        text, blocks = kit.help_blocks(deps.config.get().slack.command)
        if sub != "help":
            blocks.insert(0, kit.section(f"Unknown command `{kit.escape(sub)}`."))
        await ack(text=text, blocks=blocks, response_type="ephemeral")


async def open_request_modal(deps: Deps, trigger_id: str) -> None:
    """The request modal, on the first configured instance (its trigger_id is valid ~3 s)."""
    instances = list(deps.config.get().instances.values())
    first = instances[0]
    roles = await roles_of(deps, first)
    await deps.web.views_open(trigger_id=trigger_id, view=kit.request_modal(instances, first, roles))
