"""Slash command ack: signed `/p0 request` posts, open loop, until each HTTP 200.

Floor: the same posts to a bare aiohttp server that checks the signature. No engine floor:
the ack is answered before any workflow starts.
"""

from __future__ import annotations

import asyncio
import sys
import time

from bench.common import RUN_PY, ms, pct, ratio
from bench.context import Bench
from bench.report import Row
from bench.slack_driver import Sender, at_rate
from bench.stack import Child


async def _bare_floor(b: Bench, user: str) -> list[float]:
    stack = b.stack
    port_file = stack.tmp / "bare.port"
    cmd = [sys.executable, str(RUN_PY), "_bare_http", str(port_file)]
    bare = Child("bare-http", cmd, stack.env, stack.logdir)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        async with Sender(f"http://127.0.0.1:{port_file.read_text()}/slack/events", stack.fake_url) as s2:
            flat, _, _ = await at_rate(
                b.counts.ack_rate, b.counts.ack_floor_seconds, lambda i: s2.post(s2.command(user, "request"))
            )
    finally:
        bare.stop()
    return flat


async def run(b: Bench) -> None:
    if not b.product:
        return
    stack, counts = b.stack, b.counts
    url = f"http://127.0.0.1:{stack.app_port}/slack/events"
    users = [stack.slack_user(i) for i in range(len(stack.logins))]
    async with Sender(url, stack.fake_url) as sender:
        lat, statuses, lag = await at_rate(
            counts.ack_rate,
            counts.ack_seconds,
            lambda i: sender.post(sender.command(users[i % len(users)], "request")),
        )
    flat = await _bare_floor(b, users[0])
    b.report.raw["ack"] = {"statuses": dict(statuses), "max_send_lag_s": lag}
    b.report.add(
        Row(
            f"Slash command ack, {counts.ack_rate:g}/s for {counts.ack_seconds:g} s (n={len(lat)})",
            ms(pct(lat, 50)),
            ms(pct(lat, 99)),
            "p99 < 100 ms",
            f"bare aiohttp + signature check: {ms(pct(flat, 50))} / {ms(pct(flat, 99))}",
            f"{ratio(pct(lat, 50), pct(flat, 50))} (p99 {ratio(pct(lat, 99), pct(flat, 99))})",
            "- (no workflow)",
        )
    )
    if set(statuses) != {200}:
        b.report.note(f"ack: non-200 answers {dict(statuses)}")
