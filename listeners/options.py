"""Type-ahead for the request modal (`block_suggestion`): roles and instances past 100.

Slack allows a static select 100 options; past that the modal asks here as the person types.
Slack waits 3 s for the answer: the roles come from the short-lived cache of
`listeners.common.roles_of` (a database read of at most 1.5 s on a miss), filtered by
substring, at most 100 of them.
"""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp

from listeners.common import roles_of
from listeners.deps import Deps
from rolecall import slack_blocks as kit


def register(app: AsyncApp, deps: Deps) -> None:
    @app.options(kit.ROLE_SELECT)
    async def on_role_options(ack: Any, body: dict[str, Any]) -> None:
        await ack(options=await role_options(deps, body))

    @app.options(kit.INSTANCE_SELECT)
    async def on_instance_options(ack: Any, body: dict[str, Any]) -> None:
        names = list(deps.config.get().instances)
        await ack(options=[kit.option(n, n) for n in matching(names, str(body.get("value") or ""))])


def matching(names: list[str], typed: str) -> list[str]:
    """Names containing what was typed (any case), those starting with it first; at most 100."""
    needle = typed.strip().lower()
    hits = [n for n in names if needle in n.lower()]
    hits.sort(key=lambda n: (not n.lower().startswith(needle), n))
    return hits[: kit.MAX_OPTIONS]


async def role_options(deps: Deps, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The roles of the modal's instance (its private_metadata) that match what was typed."""
    inst = deps.config.get().instances.get(str((body.get("view") or {}).get("private_metadata") or ""))
    if inst is None:
        return []
    roles = await roles_of(deps, inst)
    return [kit.option(r, r) for r in matching(roles, str(body.get("value") or ""))]
