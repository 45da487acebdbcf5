"""Worker RSS with N open requests (granted, waiting), created in batches of 1,000.

Floor: the same worker's RSS when idle; and the engine's: the floor worker's RSS with N
minimal workflows waiting on a timer, created at the engine's pace, measured at the mass
figure's count, this figure's count and any --memory-floor counts. Both are also given per
open workflow: (RSS - idle RSS) / N.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import product
from bench.common import (
    APPROVER_EMAIL,
    BENCH,
    FLOOR_TASK_QUEUE,
    bounded,
    errors_of,
    python_child,
    ratio,
    rss_mb,
    say,
)
from bench.context import Bench
from bench.report import FloorRow, Row
from bench.stack import Child

BATCH = 1000


TRACED = 200  # with --tracemalloc, the last requests (or minimal workflows) created are traced


def _trace(b: Bench, worker: Child) -> bool:
    """With --tracemalloc: start (or, the second time, write out) the worker's allocation trace."""
    if not b.stack.env.get("BENCH_TRACEMALLOC"):
        return False
    os.kill(python_child(worker.proc.pid), signal.SIGUSR1)
    return True


async def _traced(b: Bench, worker: Child, name: str, count: int) -> None:
    """The trace of the last TRACED created, copied to bench/tracemalloc-NAME.txt."""
    out = Path(b.stack.env["BENCH_TRACEMALLOC"]) / f"{name}.tracemalloc.txt"
    out.unlink(missing_ok=True)
    _trace(b, worker)
    for _ in range(240):
        if out.exists():
            break
        await asyncio.sleep(0.5)
    if out.exists():
        text = f"the last {count} created were traced: divide by {count} for one\n" + out.read_text()
        (BENCH / f"tracemalloc-{name}.txt").write_text(text)
        say(f"memory: {name} allocations in bench/tracemalloc-{name}.txt")


class Peak:
    """The highest RSS of a process, sampled every second while the block runs."""

    def __init__(self, read: Callable[[], float]) -> None:
        self.read = read
        self.value = 0.0

    async def _sample(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                self.value = max(self.value, self.read())
                await asyncio.sleep(1)

    async def __aenter__(self) -> Peak:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        await self._task
        self.value = max(self.value, self.read())


async def _granted(b: Bench, roles: list[str], expected: int) -> int:
    deadline = time.monotonic() + 300
    granted = 0
    while time.monotonic() < deadline:
        row = b.stack.pg(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "WHERE r.rolname = ANY(%s)",
            [roles],
        )
        granted = int(row[0][0])
        if granted >= expected:
            break
        await asyncio.sleep(0.5)
    return granted


async def _continued(b: Bench, last_grant: float) -> float:
    """Until every grant has been held past the point where it continues in a fresh run
    (workflows/access_request.py, _CONTINUE_AFTER) and the worker idles; the seconds waited."""
    from workflows.access_request import _CONTINUE_AFTER

    worker = b.stack.worker
    assert worker is not None
    started = time.monotonic()
    await asyncio.sleep(max(0.0, last_grant + _CONTINUE_AFTER.total_seconds() + 2 - time.monotonic()))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        before = worker.cpu()
        await asyncio.sleep(2)
        if worker.cpu() - before < 0.1:
            break
    await asyncio.sleep(3)
    return time.monotonic() - started


async def _product(b: Bench) -> tuple[float, float]:
    """(RSS once every grant continued, peak RSS), with the creation and 5 s after it in the notes."""
    stack, n = b.stack, b.counts.memory
    worker = stack.worker
    assert worker is not None
    per_role = len(stack.logins)
    roles = [stack.role(f"mem{i}") for i in range(math.ceil(n / per_role))]
    items = [(i % per_role, roles[i // per_role]) for i in range(n)]
    started = time.monotonic()
    say(f"memory: creating {n} open grants (concurrency {b.counts.create_concurrency})")

    async def create(item: tuple[int, str]) -> str:
        rid = await product.submit(stack, item[0], item[1], timedelta(hours=2))
        await product.send_signal(stack, rid, "approve", APPROVER_EMAIL)
        return rid

    results: list[Any] = []
    steps: list[str] = []
    async with Peak(stack.worker_rss) as peak:
        tracing = bool(stack.env.get("BENCH_TRACEMALLOC"))
        cuts = sorted({*range(0, n, BATCH), *([max(n - TRACED, 0)] if tracing else []), n})
        for at, end in itertools.pairwise(cuts):  # parallel within a batch, batch by batch
            if tracing and at == max(n - TRACED, 0):
                _trace(b, worker)
            results += await bounded(b.counts.create_concurrency, items[at:end], create)
            steps.append(f"{end}: {stack.worker_rss():.0f} MB")
            say(f"memory: {steps[-1]} after {time.monotonic() - started:.0f}s")
        bad = errors_of(results)
        granted = await _granted(b, roles, n - len(bad))
        last_grant = time.monotonic()
        created_in = last_grant - started
        await asyncio.sleep(5)
        just_after = stack.worker_rss()
        waited = await _continued(b, last_grant)
    rss = stack.worker_rss()
    if tracing:
        await _traced(b, worker, "worker", min(TRACED, n))
    temporal_rss = rss_mb(stack.temporal.proc.pid) if stack.temporal else math.nan
    b.report.note(
        f"memory: {granted} of {n} granted in {created_in:.0f}s ({granted / created_in:.0f}/s, "
        f"batches of {BATCH} at concurrency {b.counts.create_concurrency}; {len(bad)} failed); "
        f"Temporal dev server RSS {temporal_rss:.0f} MB; worker RSS after each batch: {', '.join(steps)}; "
        f"5 s after the last grant {just_after:.0f} MB; the figure is read {waited:.0f}s later, once "
        "every grant has been held long enough to continue in a fresh run (_CONTINUE_AFTER)"
    )
    return rss, peak.value


# ---- the engine floor -------------------------------------------------------------------------


@dataclass
class FloorPoint:
    n: int
    rss: float
    idle: float
    seconds: float  # creating the first n

    @property
    def per_workflow_mb(self) -> float:
        return (self.rss - self.idle) / self.n


@dataclass
class MemoryFloor:
    points: dict[int, FloorPoint] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    peak: float = math.nan
    failed: int = 0


async def _settle(handles: list[Any], worker: Child, timeout: float = 120) -> None:
    """Until the workflows have run their first task (they wait on their timer) and the worker idles.

    Checked on the last ones started and a random sample: a started workflow with no pending
    workflow task is parked on its timer (and in the worker's cache, or evicted from it).
    """
    deadline = time.monotonic() + timeout
    sample = handles[-20:] + random.sample(handles, min(20, len(handles)))
    for h in sample:
        while time.monotonic() < deadline:
            desc = await h.describe()
            if not desc.raw_description.HasField("pending_workflow_task"):
                break
            await asyncio.sleep(0.2)
    while time.monotonic() < deadline:
        before = worker.cpu()
        await asyncio.sleep(1)
        if worker.cpu() - before < 0.05:
            break


async def engine_floor(b: Bench, counts: list[int]) -> MemoryFloor:
    """Minimal timer workflows, created in batches at the create concurrency, RSS at each count."""
    from bench.floors.models import Hold
    from bench.floors.workflows import TimerFloor

    worker = await b.floor_worker()
    stack, out = b.stack, MemoryFloor()
    until = datetime.now(UTC) + timedelta(hours=2)
    handles: list[Any] = []
    started = time.monotonic()
    say(f"memory floor: creating {max(counts)} minimal workflows waiting on a timer")

    async def start(i: int) -> Any:
        return await stack.client.start_workflow(
            TimerFloor.run, Hold(until=until), id=f"floor-mem/{stack.prefix}/{i}", task_queue=FLOOR_TASK_QUEUE
        )

    async with Peak(worker.rss) as peak:
        done, paused = 0, 0.0
        top = max(counts)
        tracing = bool(stack.env.get("BENCH_TRACEMALLOC"))
        stops = {*counts, *([max(top - TRACED, 0)] if tracing else [])}
        while done < top:
            if tracing and done == max(top - TRACED, 0):
                _trace(b, worker)
            step = min(BATCH, top - done, min(c for c in stops if c > done) - done)
            batch = await bounded(b.counts.create_concurrency, list(range(done, done + step)), start)
            out.failed += len(errors_of(batch))
            handles += [h for h in batch if not isinstance(h, BaseException)]
            done += step
            if done in counts:
                await _settle(handles, worker)
                seconds = time.monotonic() - started - paused  # started and parked on their timers
                pause = 5 if done == max(counts) else 2
                await asyncio.sleep(pause)
                paused += pause
                out.points[done] = FloorPoint(done, worker.rss(), b.floor_rss_idle, seconds)
                if tracing and done == top:
                    await _traced(b, worker, "floor-worker", min(TRACED, top))
                say(f"memory floor: {done} open, worker RSS {out.points[done].rss:.0f} MB")
            out.steps.append(f"{done}: {worker.rss():.0f} MB")
    out.peak = peak.value
    return out


def _floor_rows(b: Bench, f: MemoryFloor) -> None:
    for n, p in sorted(f.points.items()):
        b.report.add_floor(
            FloorRow(
                f"Worker RSS, {n} minimal workflows waiting on a timer",
                f"{p.rss:.0f} MB",
                f"{p.per_workflow_mb * 1024:.0f} KB per open workflow (idle {p.idle:.0f} MB); "
                f"started and parked in {p.seconds:.0f}s ({n / p.seconds:.0f}/s)",
                "Worker RSS" if n in (b.counts.mass, b.counts.memory) else "Worker RSS (the goal's count)",
            )
        )
    b.report.note(
        f"memory floor: floor worker RSS after each batch (settled at the counts above): "
        f"{', '.join(f.steps)}; peak {f.peak:.0f} MB; "
        f"{f.failed} failed to start"
    )


def _fill_engine(row: Row | None, product_per_mb: float, p: FloorPoint | None) -> None:
    if row is None or p is None:
        return
    row.engine = f"{p.n} minimal workflows: {p.rss:.0f} MB, {p.per_workflow_mb * 1024:.0f} KB each"
    row.engine_ratio = f"{ratio(product_per_mb, p.per_workflow_mb)} per open workflow"


async def run(b: Bench) -> None:
    n = b.counts.memory
    measured = await _product(b) if b.product else None
    floor = None
    if b.floors:
        counts = sorted({b.counts.mass, n, *b.counts.memory_floor})
        floor = await engine_floor(b, counts)
        _floor_rows(b, floor)
    if measured is not None:
        rss, peak = measured
        per = (rss - b.rss_idle) / n
        b.report.raw[f"rss_per_open:{n}"] = per
        b.report.add(
            Row(
                f"Worker RSS, {n} open (granted, waiting) requests",
                f"{rss:.0f} MB",
                f"{per * 1024:.0f} KB per open request, every grant continued; peak {peak:.0f} MB",
                "< 300 MB at 10,000",
                f"idle worker {b.rss_idle:.0f} MB",
                ratio(rss, b.rss_idle),
                key=f"rss:{n}",
            )
        )
    if floor is None:
        return
    for row in b.report.rows:
        if row.key.startswith("rss:"):
            count = int(row.key.removeprefix("rss:"))
            _fill_engine(row, b.report.raw[f"rss_per_open:{count}"], floor.points.get(count))
