"""Slack as the sender: signed slash commands and button clicks, sent open loop or one by one."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlencode

from bench.common import CHANNEL, SECRET


class Sender:
    """Signed posts to a Slack endpoint over one keep-alive session, like SlackDriver."""

    def __init__(self, url: str, fake_url: str) -> None:
        from slack_sdk.signature import SignatureVerifier

        self.url = url
        self.fake_url = fake_url.removesuffix("api/")
        self.verifier = SignatureVerifier(SECRET)
        self.n = 0

    async def __aenter__(self) -> Sender:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=15)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def post(self, body: str) -> tuple[int, float]:
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": str(self.verifier.generate_signature(timestamp=ts, body=body)),
        }
        started = time.monotonic()
        async with self.session.post(self.url, data=body.encode(), headers=headers) as resp:
            await resp.read()
            return resp.status, time.monotonic() - started

    def command(self, user: str, text: str) -> str:
        self.n += 1
        return urlencode(
            {
                "token": "legacy", "team_id": "T0ROLECALL", "team_domain": "rolecall",
                "channel_id": "CGENERAL", "channel_name": "general", "user_id": user,
                "user_name": user.lower(), "command": "/p0", "text": text, "api_app_id": "AROLECALL",
                "response_url": f"{self.fake_url}response/cmd{self.n}", "trigger_id": f"trigger.{self.n}",
            }
        )  # fmt: skip

    def approve_click(self, user: str, request_id: str) -> str:
        self.n += 1
        payload = {
            "type": "block_actions",
            "team": {"id": "T0ROLECALL", "domain": "rolecall"},
            "user": {"id": user, "username": user.lower(), "team_id": "T0ROLECALL"},
            "api_app_id": "AROLECALL",
            "token": "legacy",
            "trigger_id": f"trigger.{self.n}",
            "actions": [
                {
                    "action_id": "rolecall_approve",  # rolecall.slack_blocks.APPROVE
                    "block_id": "b",
                    "type": "button",
                    "value": request_id,
                    "action_ts": "1",
                }
            ],
            "container": {"type": "message", "message_ts": "1.000001", "channel_id": CHANNEL},
            "channel": {"id": CHANNEL, "name": "db-access"},
            "message": {"ts": "1.000001", "text": "", "blocks": []},
            "response_url": f"{self.fake_url}response/click{self.n}",
        }
        return urlencode({"payload": json.dumps(payload)})


async def at_rate(
    rate: float, seconds: float, send: Callable[[int], Coroutine[Any, Any, tuple[int, float]]]
) -> tuple[list[float], Counter[int], float]:
    """Open loop: start one send every 1/rate s for `seconds`; (latencies, statuses, max lag)."""
    n = int(rate * seconds)
    t0 = time.monotonic()
    tasks: list[asyncio.Task[tuple[int, float]]] = []
    lag = 0.0
    for i in range(n):
        due = t0 + i / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        lag = max(lag, time.monotonic() - due)
        tasks.append(asyncio.create_task(send(i)))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    for r in results:
        if isinstance(r, BaseException):
            statuses[-1] += 1
        else:
            statuses[r[0]] += 1
            if r[0] == 200:
                latencies.append(r[1])
    return latencies, statuses, lag
