"""rolecall benchmark: the real stack, each figure next to its floors, one markdown table.

Starts a Temporal dev server, PostgreSQL ($ROLECALL_BENCH_DSN or an embedded pgserver in a
temp dir), the fake Slack Web API, the product worker, the engine floors' worker and the Bolt
app in HTTP mode, each in its own process (bench/stack.py). Each figure (bench/figures/) is
measured next to a bare-SQL floor and an engine floor (minimal workflows, bench/floors/) in
the same run. It is a benchmark, not a test: it never fails on a missed goal, and CI does
not run it.

    .venv/bin/python bench/run.py                  # full run (~16 min on 2 cores)
    .venv/bin/python bench/run.py --quick          # smaller counts (~5 min)
    .venv/bin/python bench/run.py --quick --only lifecycles --floors only

See bench/README.md for what each figure and floor measures.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, sys.path[0] is bench/ itself: put the repository there instead, so the
# bench's modules are `bench.*` and none of them shadows a top-level module.
_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:
    sys.path[0] = str(_HERE.parent)
elif str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402

from bench.common import BENCH, FULL, QUICK, Counts, say  # noqa: E402
from bench.context import Bench  # noqa: E402
from bench.figures import (  # noqa: E402
    ack,
    approve_grant,
    lifecycles,
    mass_expiry,
    memory,
    slack_burst,
    startup,
)
from bench.report import Report, render, summarize_pyspy  # noqa: E402
from bench.stack import Stack, Watcher, start_app, start_stack, start_worker  # noqa: E402

# In the order they run: later figures build on the state earlier ones leave (the app that
# the start-up figure started, the lifecycle rate that paces the mass expiry).
FIGURES: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "startup": startup.run,
    "ack": ack.run,
    "click": approve_grant.run,
    "lifecycles": lifecycles.run,
    "burst": slack_burst.run,
    "mass": mass_expiry.run,
    "memory": memory.run,
}


def counts_for(args: argparse.Namespace) -> Counts:
    counts = QUICK if args.quick else FULL
    if args.memory:
        counts = dataclasses.replace(counts, memory=args.memory)
    if args.burst:
        counts = dataclasses.replace(counts, burst=args.burst)
    if args.clicks:
        counts = dataclasses.replace(counts, clicks=args.clicks)
    if args.memory_floor is not None:
        extra = tuple(int(x) for x in args.memory_floor.split(",") if x.strip())
        counts = dataclasses.replace(counts, memory_floor=extra)
    return counts


async def _start_product(b: Bench, wanted: set[str]) -> None:
    """The start-up figure (which leaves the app running), else the app; then the worker."""
    stack = b.stack
    if "startup" in wanted:
        await FIGURES["startup"](b)
    if stack.app is None:
        stack.app = start_app(stack)
        await stack.app.wait_for_line("Slack app listening", 30)
    stack.worker = start_worker(stack, b.profile)
    await stack.worker.wait_for_line("bench worker ready", 60)
    await asyncio.sleep(2)
    b.rss_idle = stack.worker_rss()


def _write_profiles(stack: Stack) -> None:
    for child, name in ((stack.worker, "worker"), (stack.floor_worker, "floor-worker")):
        raw = stack.tmp / f"{name}.pyspy.txt"
        if child is None or not raw.exists():
            continue
        out = BENCH / f"profile-{name}.txt"
        out.write_text(summarize_pyspy(raw) + "\n")
        shutil.copy(raw, BENCH / f"profile-{name}.raw.txt")
        say(f"{name} profile summary in {out}")


def _teardown(stack: Stack, report: Report, profile: bool) -> None:
    for child in (stack.worker, stack.floor_worker):
        if child is not None:
            child.stop(timeout=60)
    if profile:
        _write_profiles(stack)
    fake = next((c for c in stack.children if c.name == "fake-slack"), None)
    stack.close()
    if fake is not None:
        calls = [ln for ln in fake.log_text().splitlines() if ln.startswith("fake slack calls")]
        if calls:
            report.note(calls[-1])


async def bench(args: argparse.Namespace) -> int:
    counts = counts_for(args)
    wanted = set(args.only.split(",")) if args.only else set(FIGURES)
    unknown = wanted - set(FIGURES)
    if unknown:
        print(f"bench: unknown figure(s) {', '.join(sorted(unknown))} (one of: {', '.join(FIGURES)})",
              file=sys.stderr)  # fmt: skip
        return 2
    began = time.monotonic()
    report = Report()
    tmp = Path(tempfile.mkdtemp(prefix="rolecall-bench-"))
    stack: Stack | None = None
    try:
        stack = await start_stack(counts, tmp)
        options = {k: int(v) for k, _, v in (o.partition("=") for o in args.worker_option)}
        if options:
            stack.env["BENCH_WORKER_OPTIONS"] = json.dumps(options)
            report.note(f"EXPERIMENT: both workers ran with extra Worker arguments {options}")
        if args.tracemalloc:
            stack.env["BENCH_TRACEMALLOC"] = str(tmp)
            report.note("EXPERIMENT: both workers traced their allocations (tracemalloc), which slows them")
        from rolecall.config import Settings

        tuning = Settings()
        report.note(
            "worker settings (both workers): max_cached_workflows "
            f"{options.get('max_cached_workflows', tuning.max_cached_workflows)}, "
            f"sticky queue schedule-to-start timeout {tuning.sticky_timeout.total_seconds():g} s, "
            f"workflow sandbox {'on' if tuning.workflow_sandbox else 'off'}"
        )
        watcher = Watcher(stack.dsn, 0.01)
        b = Bench(stack, counts, report, watcher, profile=args.profile,
                  product=args.floors != "only", floors=args.floors != "none")  # fmt: skip
        await _start_product(b, wanted if b.product else set())
        await watcher.start()
        try:
            for name, figure in FIGURES.items():
                if name in wanted and name != "startup":
                    watcher.watch([])
                    await figure(b)
        finally:
            await watcher.stop()
    finally:
        if stack is not None:
            _teardown(stack, report, args.profile)
        if args.keep_logs:
            say(f"logs kept in {tmp / 'logs'}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    text = render(report, stack.pg_version if stack else None, args.quick, time.monotonic() - began)
    print("\n" + text, flush=True)
    if not args.no_write:
        (BENCH / ("results-quick.md" if args.quick else "results.md")).write_text(text)
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="rolecall benchmark (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="smaller counts and windows, for a smoke run")
    p.add_argument("--profile", action="store_true", help="run both workers under py-spy")
    p.add_argument("--only", help=f"comma-separated figures: {','.join(FIGURES)}")
    p.add_argument(
        "--floors",
        choices=["all", "none", "only"],
        default="all",
        help="engine floors: with the figures (all), not at all (none), "
        "or without the product figures (only)",
    )
    p.add_argument("--memory", type=int, help="open requests for the memory figure (10000 = the goal's)")
    p.add_argument("--clicks", type=int, help="approve clicks and floor signals (default 200; 10 quick)")
    p.add_argument("--burst", type=int, help="requests for the burst figure (default 300; 60 with --quick)")
    p.add_argument(
        "--memory-floor",
        metavar="N,N",
        help="extra counts for the memory floor (default 1000,10000; none with --quick); "
        "the mass and memory figures' counts are always measured",
    )
    p.add_argument(
        "--worker-option",
        action="append",
        default=[],
        metavar="NAME=INT",
        help="experiment: an extra temporalio Worker argument for both workers, "
        "e.g. max_cached_workflows=250",
    )
    p.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace what the last open requests allocate; writes bench/tracemalloc-*.txt",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the children's logs in the temp dir")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    return p.parse_args(argv)


def child_main(argv: list[str]) -> int | None:
    """The hidden sub-commands that run the stack's own processes; None when argv is not one."""
    from bench import procs

    if argv[:1] == ["_fake_slack"]:
        return procs.serve_fake_slack(argv[1], argv[2], argv[3] if len(argv) > 3 else None)
    if argv[:1] == ["_bare_http"]:
        return procs.serve_bare_http(argv[1])
    if argv[:1] not in (["_worker"], ["_app"], ["_floor_worker"]):
        return None
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if argv[0] == "_worker":
        asyncio.run(procs.bench_worker())
    elif argv[0] == "_app":
        asyncio.run(procs.bench_app())
    else:
        from bench.floors import worker as floor_worker

        asyncio.run(floor_worker.serve())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    code = child_main(argv)
    if code is not None:
        return code
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING)
    code = 1
    try:
        code = asyncio.run(asyncio.wait_for(bench(args), 70 * 60))
    except KeyboardInterrupt:
        code = 130
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)  # the Temporal SDK's bridge may abort the interpreter while it finalizes


if __name__ == "__main__":
    sys.exit(main())
