"""What every listener shares: built once by `slack_app.build_app`, passed to each `register`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient
from temporalio.client import Client

from rolecall.config import ConfigStore, Settings
from rolecall.slack_identity import SlackIdentity, Ttl

log = logging.getLogger("rolecall.slack_app")

# An instance's role list is read from the database at most this often (per instance).
ROLE_CACHE_SECONDS = 30


@dataclass
class Deps:
    config: ConfigStore
    temporal: Client
    web: AsyncWebClient
    settings: Settings
    identity: SlackIdentity
    # ROLECALL_DECISION_KEY, read once: every decision sent from Slack is signed with it.
    # None: decisions go unsigned and are recorded "unverified".
    decision_key: bytes | None = None
    role_cache: Ttl = field(default_factory=lambda: Ttl(ROLE_CACHE_SECONDS))
    # Work started after the ack (Slack allows 3 s); held here so it is not garbage collected.
    background: set[asyncio.Task[Any]] = field(default_factory=set)

    def later(self, coro: Awaitable[Any]) -> None:
        """Run `coro` after the listener returns; a failure is logged, never lost."""

        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("slack background work failed")

        task = asyncio.ensure_future(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)
