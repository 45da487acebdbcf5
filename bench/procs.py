"""The bench's child processes (hidden sub-commands of run.py): the fake Slack, the product
worker, the Bolt app and the bare HTTP server of the ack floor. The floors' worker is in
bench/floors/worker.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import SECRET, TOKEN, repo_on_path


def serve_fake_slack(users_file: str, port_file: str, command_dir: str | None = None) -> int:
    """The fake Slack; with `command_dir`, it also obeys the driver's commands (fake_commands)."""
    repo_on_path()
    from tests.fake_slack import FakeSlack

    fake = FakeSlack(token=TOKEN)
    for user_id, email, name in json.loads(Path(users_file).read_text()):
        fake.add_user(user_id, email, name)
    fake.start()
    Path(port_file).write_text(str(fake.port))
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    deadline = time.monotonic() + 3 * 3600
    while not stop and time.monotonic() < deadline:
        if command_dir is not None:
            fake_commands(fake, Path(command_dir))
        time.sleep(0.05)
    counts = Counter(c.method for c in fake.calls)
    print("fake slack calls:", json.dumps(counts), flush=True)
    fake.stop()
    return 0


def record_collections(name: str) -> None:
    """With BENCH_GC (a directory): each collection of generation 1 or 2 and how long it paused
    the process, one line each in `<name>.gc.txt` (wall time, generation, ms), for the notes."""
    where = os.environ.get("BENCH_GC")
    if not where:
        return
    import gc

    out = open(Path(where) / f"{name}.gc.txt", "a", buffering=1)  # noqa: SIM115 - the process's life
    began = [0.0]

    def collected(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        elif info["generation"] >= 1:
            paused = (time.perf_counter() - began[0]) * 1000
            out.write(f"{time.time():.3f} {info['generation']} {paused:.2f}\n")

    gc.callbacks.append(collected)


def trace_memory(name: str) -> None:
    """With BENCH_TRACEMALLOC (a directory): SIGUSR1 starts tracing allocations, the next writes them.

    For --tracemalloc: what each open workflow holds, by the line that allocated it, taken from
    the worker itself. Tracing only the last requests created keeps the worker at speed for
    the rest (tracing everything slows it until its activities time out).
    """
    where = os.environ.get("BENCH_TRACEMALLOC")
    if not where:
        return
    import tracemalloc

    def toggle() -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(1)
            return
        skip = [tracemalloc.__file__, "<frozen importlib._bootstrap>"]
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, f) for f in skip])
        tracemalloc.stop()
        lines = [f"traced {sum(s.size for s in snapshot.statistics('filename')) / 2**20:.1f} MB"]
        for kind in ("filename", "lineno"):
            lines.append(f"-- top by {kind}")
            lines += [str(stat) for stat in snapshot.statistics(kind)[:40]]
        tmp = Path(where) / f"{name}.tracemalloc.part"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.rename(Path(where) / f"{name}.tracemalloc.txt")

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, toggle)


def fake_commands(fake: Any, directory: Path) -> None:
    """Answer each `<n>.json` command in `directory` with `<n>.reply` (written, then renamed).

    The fake runs in its own process, so this is how a figure turns its rate limiter on and
    off and reads back what it was sent: {"op": "rate_limit", "per_second": 1.0 | null,
    "burst": N}, {"op": "calls", "since": K} (the calls from the K-th on, with the wall time
    each arrived; the reply's "count" is the next K).
    """
    for path in sorted(directory.glob("*.json")):
        command = json.loads(path.read_text())
        reply: dict[str, Any] = {"ok": True}
        if command["op"] == "rate_limit":
            fake.rate_limit(command.get("per_second"), int(command.get("burst") or 1))
        elif command["op"] == "calls":
            offset = time.time() - time.monotonic()
            calls = list(fake.calls)
            reply["count"] = len(calls)
            reply["calls"] = [_call_record(c, offset) for c in calls[int(command.get("since") or 0) :]]
        else:
            reply = {"ok": False, "error": f"unknown op {command['op']!r}"}
        tmp = path.with_suffix(".part")
        tmp.write_text(json.dumps(reply))
        tmp.rename(path.with_suffix(".reply"))
        path.unlink()


def _call_record(call: Any, offset: float) -> dict[str, Any]:
    """What the burst figure needs of one call: where it went, what it said, how it ended."""
    args, response = call.args, call.response
    return {
        "method": call.method,
        "at": call.at + offset,
        "status": call.status,
        "ok": bool(response.get("ok")),
        "error": response.get("error"),
        "channel": response.get("channel") or args.get("channel"),
        "ts": response.get("ts") or args.get("ts"),
        "thread_ts": args.get("thread_ts"),
        "text": args.get("text"),
        "blocks": json.dumps(args.get("blocks") or []),
    }


def worker_options() -> dict[str, Any]:
    """An experiment's extra temporalio Worker arguments (--worker-option), for both workers."""
    return dict(json.loads(os.environ.get("BENCH_WORKER_OPTIONS") or "{}"))


async def until_stopped() -> None:
    """Until SIGINT or SIGTERM (at most 3 h)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), 3 * 3600)


async def bench_worker() -> None:
    """What `rolecall worker` runs (the same build_worker), with the bench's experiments.

    The Slack client points at the fake, and `--worker-option` and `--tracemalloc` reach in
    here, which `worker.run` does not allow.
    """
    from activities.slack import web_client
    from rolecall.config import ConfigStore, Settings
    from rolecall.slack_client import kept_alive
    from rolecall.temporal import connect
    from worker import build_worker, freeze_start_up

    options = worker_options()
    if options:  # an experiment (--worker-option): temporalio Worker arguments
        from temporalio.worker import Worker

        import worker as worker_module

        def with_options(*args: Any, **kwargs: Any) -> Worker:
            # Over build_worker's own arguments: a functools.partial would lose to them, and
            # max_cached_workflows=N silently ran with the default.
            return Worker(*args, **{**kwargs, **options})

        setattr(worker_module, "Worker", with_options)  # noqa: B010
        print(f"bench worker options: {options}", flush=True)
    trace_memory("worker")
    record_collections("worker")
    settings = Settings()
    config = ConfigStore(os.environ["ROLECALL_CONFIG"])
    client = await connect(settings)
    slack = web_client(TOKEN, base_url=os.environ["BENCH_SLACK_API_URL"], rate_limit_retries=0)
    worker = build_worker(
        client,
        config,
        settings.task_queue,
        slack_client=slack,
        max_cached_workflows=settings.max_cached_workflows,
        workflow_sandbox=settings.workflow_sandbox,
        sticky_timeout=settings.sticky_timeout,
        decision_key=settings.decision_key_bytes,
    )
    with contextlib.suppress(ImportError):  # as `rolecall worker` does, where it exists
        from rolecall.schedules import ensure_reconcile_schedules

        await ensure_reconcile_schedules(client, config.get(), settings.task_queue)
    async with kept_alive(slack), worker:  # as `rolecall worker` does
        freeze_start_up()
        print("bench worker ready", flush=True)
        await until_stopped()


async def bench_app() -> None:
    """`slack_app.serve` in HTTP mode, but listening on 127.0.0.1 (serve binds 0.0.0.0)."""
    from aiohttp import web

    from rolecall.config import ConfigStore, Settings
    from rolecall.slack_client import kept_alive, web_client
    from rolecall.temporal import connect
    from slack_app import build_app

    record_collections("app")
    settings = Settings()
    config = ConfigStore(os.environ.get("ROLECALL_CONFIG") or settings.config)
    client = await connect(settings)
    slack = web_client(os.environ["SLACK_BOT_TOKEN"], base_url=os.environ.get("SLACK_API_URL") or None)
    async with kept_alive(slack):  # as serve does
        app = build_app(config, client, settings, slack)
        port = config.get().slack.port
        runner = web.AppRunner(app.web_app(path="/slack/events", port=port))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print(f"Slack app listening on 127.0.0.1:{port}", flush=True)
        try:
            await until_stopped()
        finally:
            await runner.cleanup()


def serve_bare_http(port_file: str) -> int:
    """The ack floor: aiohttp answering 200 after checking Slack's signature, nothing else."""
    from aiohttp import web
    from slack_sdk.signature import SignatureVerifier

    verifier = SignatureVerifier(SECRET)

    async def handle(request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        ok = verifier.is_valid(
            body=body,
            timestamp=request.headers.get("X-Slack-Request-Timestamp", ""),
            signature=request.headers.get("X-Slack-Signature", ""),
        )
        return web.Response(status=200 if ok else 401, text="")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/slack/events", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        Path(port_file).write_text(str(runner.addresses[0][1]))  # noqa: ASYNC240
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 3 * 3600)
        await runner.cleanup()

    asyncio.run(main())
    return 0
