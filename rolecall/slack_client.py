"""The one way rolecall builds a Slack Web API client (the Slack app and the worker alike)."""

from __future__ import annotations

from typing import Any

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
