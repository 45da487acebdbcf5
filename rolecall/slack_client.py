"""The one way rolecall builds a Slack Web API client (the Slack app and the worker alike)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient


def web_client(
    token: str, base_url: str | None = None, timeout: int = 10, rate_limit_retries: int = 3
) -> AsyncWebClient:
    """An async Web API client that waits out 429s (Retry-After) and reconnects once.

    The worker passes rate_limit_retries=0: its notifications retry from Temporal instead
    (activities/slack.py), so none of them holds an activity slot while it waits.
    """
    kwargs: dict[str, Any] = {"token": token, "timeout": timeout}
    if base_url:
        kwargs["base_url"] = base_url
    client = AsyncWebClient(**kwargs)
    client.retry_handlers = [
        AsyncConnectionErrorRetryHandler(max_retry_count=1),
        AsyncRateLimitErrorRetryHandler(max_retry_count=rate_limit_retries),
    ]
    return client


@contextlib.asynccontextmanager
async def kept_alive(client: AsyncWebClient) -> AsyncIterator[AsyncWebClient]:
    """Every call of `client` through one HTTP session, so its connections are kept alive.

    Without a session slack_sdk opens one per call: each message paid a new TCP and TLS
    handshake with slack.com, and the process's CPU for it. The session belongs to the running
    event loop, hence a context manager around the process's life rather than the client.
    """
    timeout = aiohttp.ClientTimeout(total=client.timeout)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=client.trust_env_in_session) as session:
        client.session = session
        try:
            yield client
        finally:
            client.session = None
