"""The fake Slack's per-channel rate limiter, seen through real slack_sdk clients.

The benchmark's burst figure relies on it answering like Slack's chat.postMessage tier
(429 `ratelimited` + Retry-After once a channel's burst is spent), and every other test on
it being off unless asked for. The rate used here is so slow (one message per 100 s) that
no refill can happen during a test, so nothing below depends on timing.
"""

from __future__ import annotations

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.fake_slack import FakeSlack


def bare_client(fake: FakeSlack) -> AsyncWebClient:
    """No retry handlers: the 429 reaches the caller as Slack sent it."""
    return AsyncWebClient(token=fake.token, base_url=fake.url, timeout=5)


async def test_throttles_per_channel_with_retry_after() -> None:
    with FakeSlack() as fake:
        fake.rate_limit(per_channel_per_second=0.01, burst=2)
        client = bare_client(fake)
        first = await client.chat_postMessage(channel="CAPPROVERS", text="one")
        await client.chat_update(channel="CAPPROVERS", ts=str(first["ts"]), text="one, edited")
        with pytest.raises(SlackApiError) as refused:
            await client.chat_postMessage(channel="CAPPROVERS", text="three")
        response = refused.value.response
        assert response.status_code == 429
        assert response["error"] == "ratelimited"
        retry_after = response.headers["Retry-After"]  # a str, or a list of them (sync client)
        assert 90 <= int(retry_after if isinstance(retry_after, str) else retry_after[0]) <= 100
        # Another channel has its own bucket; methods other than messages are not limited.
        await client.chat_postMessage(channel="COTHER", text="elsewhere")
        await client.auth_test()
        statuses = [(c.method, c.args.get("channel"), c.status) for c in fake.calls]
        assert statuses == [
            ("chat.postMessage", "CAPPROVERS", 200),
            ("chat.update", "CAPPROVERS", 200),
            ("chat.postMessage", "CAPPROVERS", 429),
            ("chat.postMessage", "COTHER", 200),
            ("auth.test", None, 200),
        ]
        # The refused message was not stored: only what Slack accepted is in the channel.
        assert [m["text"] for m in fake.channel_messages("CAPPROVERS")] == ["one, edited"]


async def test_ephemeral_messages_count_against_their_channel() -> None:
    with FakeSlack() as fake:
        fake.rate_limit(per_channel_per_second=0.01, burst=1)
        client = bare_client(fake)
        await client.chat_postEphemeral(channel="CGENERAL", user="UALICE", text="only you")
        with pytest.raises(SlackApiError) as refused:
            await client.chat_postMessage(channel="CGENERAL", text="everyone")
        assert refused.value.response.status_code == 429


async def test_off_by_default_and_when_turned_off() -> None:
    with FakeSlack() as fake:
        client = bare_client(fake)
        for i in range(20):
            await client.chat_postMessage(channel="CAPPROVERS", text=f"message {i}")
        fake.rate_limit(per_channel_per_second=0.01, burst=1)
        await client.chat_postMessage(channel="CAPPROVERS", text="spends the burst")
        fake.rate_limit(None)
        await client.chat_postMessage(channel="CAPPROVERS", text="not limited any more")
        assert all(c.status == 200 for c in fake.calls)
        assert len(fake.channel_messages("CAPPROVERS")) == 22


async def test_product_client_waits_out_retry_after() -> None:
    """rolecall's own client (rolecall.slack_client) sleeps Retry-After, then is let through.

    At one message per second the second post normally meets a 429; on a stalled machine the
    bucket may have refilled first, so the test asserts the outcome, not that a 429 happened.
    """
    from rolecall.slack_client import web_client

    with FakeSlack() as fake:
        fake.rate_limit(per_channel_per_second=1.0, burst=1)
        client = web_client(fake.token, base_url=fake.url, timeout=5)
        await client.chat_postMessage(channel="CAPPROVERS", text="spends the burst")
        sent = await client.chat_postMessage(channel="CAPPROVERS", text="waits its turn")
        assert sent["ok"]
        statuses = [c.status for c in fake.calls_to("chat.postMessage")]
        assert statuses[0] == 200 and statuses[-1] == 200 and set(statuses) <= {200, 429}
        assert sorted(m["text"] for m in fake.channel_messages("CAPPROVERS")) == [
            "spends the burst",
            "waits its turn",
        ]
