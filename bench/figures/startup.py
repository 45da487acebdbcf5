"""Start-up: `rolecall worker` until ready, and the Bolt app until a signed post gets 200.

Floors: the interpreter and the imports alone. No engine floor: no workflow runs here.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time

from bench.common import APPROVER_SLACK, REPO, ratio, secs
from bench.context import Bench
from bench.report import Row
from bench.slack_driver import Sender
from bench.stack import Child, start_app


async def _import_floor(env: dict[str, str], code: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.monotonic()
        await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code], cwd=REPO, env=env, check=True)
        times.append(time.monotonic() - t)
    return times


async def _worker(b: Bench, env: dict[str, str]) -> None:
    stack, n = b.stack, b.counts.startups
    worker_times = []
    for i in range(n):
        child = Child(f"startup-worker-{i}", [str(REPO / ".venv" / "bin" / "rolecall"), "worker"],
                      env, stack.logdir)  # fmt: skip
        try:
            worker_times.append(await child.wait_for_line(" ready: task queue", 30))
        finally:
            child.stop()
    import_floor = await _import_floor(env, "import worker, rolecall.cli", n)
    b.report.add(
        Row(
            "Start-up: `rolecall worker` to ready",
            secs(statistics.median(worker_times)),
            f"max {secs(max(worker_times))}",
            "< 2 s",
            f"imports alone {secs(statistics.median(import_floor))}",
            ratio(statistics.median(worker_times), statistics.median(import_floor)),
        )
    )


async def _first_200(sender: Sender, child: Child) -> float:
    import aiohttp

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and child.proc.poll() is None:
        try:
            status, _ = await sender.post(sender.command(APPROVER_SLACK, "help"))
            if status == 200:
                return time.monotonic() - child.started
        except (OSError, aiohttp.ClientError):
            pass
        await asyncio.sleep(0.01)
    raise RuntimeError("the Slack app did not answer:\n" + child.log_text()[-3000:])


async def _app(b: Bench, env: dict[str, str]) -> None:
    stack, n = b.stack, b.counts.startups
    app_times = []
    async with Sender(f"http://127.0.0.1:{stack.app_port}/slack/events", stack.fake_url) as sender:
        for i in range(n):
            child = start_app(stack, f"slack-app-{i}")
            app_times.append(await _first_200(sender, child))
            if i < n - 1:
                child.stop()
                stack.children.remove(child)
            else:
                stack.app = child  # the last one serves the benchmark
    app_floor = await _import_floor(env, "import slack_app", n)
    b.report.add(
        Row(
            "Start-up: Bolt app (HTTP) to first 200",
            secs(statistics.median(app_times)),
            f"max {secs(max(app_times))}",
            "< 2 s",
            f"imports alone {secs(statistics.median(app_floor))}",
            ratio(statistics.median(app_times), statistics.median(app_floor)),
        )
    )


async def run(b: Bench) -> None:
    if not b.product:
        return
    env = {**b.stack.env, "ROLECALL_TASK_QUEUE": "rolecall-bench-startup"}
    env.pop("SLACK_BOT_TOKEN", None)
    await _worker(b, env)
    await _app(b, env)
