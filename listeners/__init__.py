"""The Slack app's listeners, one module per kind of request Slack sends.

Each module's `register(app, deps)` adds its listeners to the Bolt app; `middleware` comes
first, so no listener runs for someone rolecall does not act for. Block Kit is built by the
pure functions of `rolecall.slack_blocks`; Temporal is reached through `rolecall.operations`.
"""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from listeners import actions, commands, events, middleware, options, views
from listeners.deps import Deps

__all__ = ["Deps", "register_listeners"]


def register_listeners(app: AsyncApp, deps: Deps) -> None:
    middleware.register(app, deps)
    commands.register(app, deps)
    actions.register(app, deps)
    views.register(app, deps)
    options.register(app, deps)
    events.register(app, deps)
