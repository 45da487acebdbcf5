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


async def publish_home(deps: Deps, who: Identity, page: str | None = None, page_number: int = 1) -> None:
    """Also run after a button on the Home tab, so it shows the decision at once.

    Everything comes from the visibility store; `page` is the token of a later page of the
    requests waiting for this approver (the "Next page" button).
    """
    grants, pending, todo = await asyncio.gather(
        own_requests(deps, who.email, (RequestState.GRANTED, RequestState.REVOKING)),
        own_requests(deps, who.email, (RequestState.PENDING, RequestState.APPROVED)),
        waiting_for(deps, who.email, page),
    )
    view = kit.home_view(grants, pending, todo, page_number)
    await deps.web.views_publish(user_id=who.user_id, view=view)
