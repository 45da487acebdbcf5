"""App Home: the opener's active requests and grants, and the requests waiting for them."""

from __future__ import annotations

import asyncio
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext

from listeners.common import me, own_requests, waiting_for
from listeners.deps import Deps
from rolecall import slack_blocks as kit
from rolecall.models import RequestState
from rolecall.slack_identity import Identity


def register(app: AsyncApp, deps: Deps) -> None:
    @app.event("app_home_opened")
    async def on_home(event: dict[str, Any], context: AsyncBoltContext) -> None:
        if event.get("tab", "home") == "home":
            await publish_home(deps, me(context))


async def publish_home(deps: Deps, who: Identity) -> None:
    """Also run after a button on the Home tab, so it shows the decision at once."""
    mine, todo = await asyncio.gather(own_requests(deps, who.email), waiting_for(deps, who.email))
    grants = [s for s in mine if s.state == RequestState.GRANTED]
    pending = [s for s in mine if s.state == RequestState.PENDING]
    await deps.web.views_publish(user_id=who.user_id, view=kit.home_view(grants, pending, todo))
