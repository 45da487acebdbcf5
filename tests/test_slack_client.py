"""rolecall's Slack Web API client keeps its connections alive (rolecall.slack_client).

Against slack.com every new connection is a TCP and a TLS handshake; the worker sends a
message for every state change of every request, so each must not pay for one.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from rolecall.slack_client import kept_alive, web_client
from tests.fake_slack import FakeSlack


async def test_calls_share_one_connection_while_kept_alive() -> None:
    with FakeSlack() as fake:
        async with kept_alive(web_client(fake.token, base_url=fake.url, timeout=5)) as client:
            for i in range(5):
                await client.chat_postMessage(channel="CAPPROVERS", text=f"message {i}")
            await client.auth_test()
        assert len(fake.calls) == 6 and fake.connections == 1
        # Outside the session the client still works, on a connection of its own per call.
        await client.chat_postMessage(channel="CAPPROVERS", text="after")
        assert fake.connections == 2
        assert len(fake.channel_messages("CAPPROVERS")) == 6


async def test_without_the_session_every_call_opens_a_connection() -> None:
    """Why kept_alive exists: slack_sdk's default is a new session (and connection) per call."""
    with FakeSlack() as fake:
        client = web_client(fake.token, base_url=fake.url, timeout=5)
        for i in range(3):
            await client.chat_postMessage(channel="CAPPROVERS", text=f"message {i}")
        assert fake.connections == 3


async def test_a_kept_alive_client_keeps_its_timeout() -> None:
    with FakeSlack() as fake:
        fake.hang("chat.postMessage", seconds=4)
        async with kept_alive(web_client(fake.token, base_url=fake.url, timeout=1)) as client:
            started = time.monotonic()
            with pytest.raises((asyncio.TimeoutError, aiohttp.ClientError)):
                await client.chat_postMessage(channel="CAPPROVERS", text="hangs")
            assert time.monotonic() - started < 3.5
