"""Sustained lifecycles: K clients, closed loop, for a fixed window; completed cycles per second.

Product cycle: request (`operations.submit`) -> approve (`operations.decide`) -> GRANT seen
-> relinquish (`operations.decide`) -> REVOKE seen -> workflow closed.
Floors: bare GRANT + REVOKE pairs on one connection; and the engine's: the same clients for
the same window running a minimal workflow (start -> signal -> GRANT activity -> signal ->
REVOKE activity -> complete), once with regular and once with local activities.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from bench import product
from bench.common import APPROVER_EMAIL, FLOOR_TASK_QUEUE, ms, pct, rate_ratio
from bench.context import Bench
from bench.report import FloorRow, Row
from bench.stack import CpuMeter, Stack

PHASES = [
    "submit (checked)",
    "approve sent",
    "until GRANT committed",
    "until relinquish accepted",
    "until REVOKE committed",
    "until workflow closed",
]
FLOOR_PHASES = [
    "start",
    "signal sent",
    "until GRANT committed",
    "release signal sent",
    "until REVOKE committed",
    "until workflow closed",
]

# One cycle for client k: appends a time.monotonic() mark after each phase, returns the workflow ID.
Cycle = Callable[[int, list[float]], Awaitable[str]]


@dataclass
class Loop:
    window: float
    done: list[float] = field(default_factory=list)
    cycle_times: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    phases: dict[str, list[float]] = field(default_factory=dict)
    last_id: str = ""
    drained: float = 0.0
    ops: float = 0.0  # dev server persistence operations during the window
    by_operation: Counter[str] = field(default_factory=Counter)
    busy: float = 0.0  # and the sum of their latencies
    cpu: str = ""
    wall: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.done) / self.window

    def p(self, q: float) -> float:
        return pct(self.cycle_times, q)


async def closed_loop(b: Bench, cycle: Cycle, names: list[str]) -> Loop:
    """`lifecycle_concurrency` clients each run `cycle` back to back until the window closes."""
    stack, counts = b.stack, b.counts
    loop = Loop(window=counts.lifecycle_seconds)
    stop_at = time.monotonic() + loop.window

    async def client(k: int) -> None:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            marks = [started]
            try:
                wf_id = await cycle(k, marks)
                loop.last_id = wf_id
                for name, a, c in zip(names, marks, marks[1:], strict=False):
                    loop.phases.setdefault(name, []).append(c - a)
            except Exception as e:
                loop.failures[type(e).__name__] += 1
                await asyncio.sleep(0.5)
                continue
            end = time.monotonic()
            if end <= stop_at:
                loop.done.append(end)
                loop.cycle_times.append(end - started)

    ops0, busy0, by0 = await asyncio.to_thread(stack.persistence_by_operation)
    with CpuMeter(stack) as cpu:
        await asyncio.gather(*(client(k) for k in range(counts.lifecycle_concurrency)))
    ops1, busy1, by1 = await asyncio.to_thread(stack.persistence_by_operation)
    loop.by_operation = by1 - by0
    loop.drained = time.monotonic() - stop_at
    loop.ops, loop.busy, loop.cpu, loop.wall = ops1 - ops0, busy1 - busy0, cpu.describe(), cpu.wall
    return loop


def product_cycle(stack: Stack, b: Bench, role: str) -> Cycle:
    from rolecall import operations
    from rolecall.errors import NotAllowed
    from rolecall.models import Decision

    async def cycle(k: int, marks: list[float]) -> str:
        login = stack.logins[k]
        email = stack.email(login)
        rid = await product.submit(stack, k, role, timedelta(hours=1))
        marks.append(time.monotonic())
        await operations.decide(stack.client, rid, "approve", Decision(actor=APPROVER_EMAIL, via="slack"))
        marks.append(time.monotonic())
        await b.watcher.wait((login, role), True, 30)
        marks.append(time.monotonic())
        for _ in range(200):  # GRANT committed; the workflow may not say GRANTED yet
            try:
                await operations.decide(stack.client, rid, "relinquish", Decision(actor=email, via="slack"))
                break
            except NotAllowed:
                await asyncio.sleep(0.01)
        marks.append(time.monotonic())
        await b.watcher.wait((login, role), False, 30)
        marks.append(time.monotonic())
        await product.result(stack, rid)
        marks.append(time.monotonic())
        return rid

    return cycle


def floor_cycle(stack: Stack, b: Bench, role: str, local: bool) -> Cycle:
    from bench.floors.models import FloorInput, Nudge
    from bench.floors.workflows import LifecycleFloor

    serial = iter(range(10**9))
    kind = "local" if local else "regular"

    async def cycle(k: int, marks: list[float]) -> str:
        login = stack.logins[k]
        handle = await stack.client.start_workflow(
            LifecycleFloor.run, FloorInput(login=login, role=role, local=local),
            id=f"floor-lc/{stack.prefix}/{kind}/{next(serial)}", task_queue=FLOOR_TASK_QUEUE,
        )  # fmt: skip
        marks.append(time.monotonic())
        await handle.signal(LifecycleFloor.approve, Nudge())
        marks.append(time.monotonic())
        await b.watcher.wait((login, role), True, 30)
        marks.append(time.monotonic())
        await handle.signal(LifecycleFloor.release, Nudge())
        marks.append(time.monotonic())
        await b.watcher.wait((login, role), False, 30)
        marks.append(time.monotonic())
        await asyncio.wait_for(handle.result(), 120)
        marks.append(time.monotonic())
        return str(handle.id)

    return cycle


def bare_floor(stack: Stack) -> float:
    """Bare GRANT + REVOKE pairs on one connection for a few seconds, per second."""
    import psycopg
    from psycopg import sql

    role = sql.Identifier(stack.floor_role("f_grant"))
    pairs = 0
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        t = time.monotonic()
        while time.monotonic() - t < 3 and pairs < 100_000:
            login = sql.Identifier(stack.logins[pairs % len(stack.logins)])
            conn.execute(sql.SQL("GRANT {} TO {}").format(role, login))
            conn.execute(sql.SQL("REVOKE {} FROM {}").format(role, login))
            pairs += 1
        return pairs / (time.monotonic() - t)


async def describe(b: Bench, loop: Loop, label: str, names: list[str]) -> None:
    """The notes every closed loop gets: failures, drain, CPU, persistence, history, phases."""
    events = await product.history_shape(b.stack, loop.last_id) if loop.last_id else "n/a"
    if loop.failures:
        b.report.note(f"{label}: failures {dict(loop.failures)}")
    b.report.note(f"{label}: in-flight cycles drained {loop.drained:.1f}s after the window closed")
    b.report.note(f"{label}: {loop.cpu}")
    b.report.note(
        f"{label}: Temporal dev server persistence (SQLite) did {loop.ops / loop.wall:.0f} operations/s, "
        f"{loop.ops / max(len(loop.done), 1):.0f} per completed cycle; their latencies sum to "
        f"{loop.busy / loop.wall:.2f} s per second; one lifecycle's history: {events}"
    )
    cycles = max(len(loop.done), 1)
    b.report.note(
        f"{label}: persistence operations per cycle: "
        + ", ".join(f"{op} {n / cycles:.1f}" for op, n in loop.by_operation.most_common(8))
    )
    b.report.note(
        f"{label}: median phase times: "
        + ", ".join(
            f"{name} {ms(statistics.median(loop.phases[name]))}" for name in names if name in loop.phases
        )
    )


async def engine_floors(b: Bench) -> tuple[Loop, Loop]:
    """The minimal lifecycle with regular, then with local activities."""
    await b.floor_worker()
    role = b.stack.floor_role("f_lc")
    loops = []
    for local in (False, True):
        b.watcher.watch([role], interval=0.01)
        loop = await closed_loop(b, floor_cycle(b.stack, b, role, local), FLOOR_PHASES)
        kind = "local" if local else "regular"
        b.report.add_floor(
            FloorRow(
                f"Minimal lifecycle, {kind} activities, {b.counts.lifecycle_concurrency} clients "
                f"for {loop.window:g} s (n={len(loop.done)})",
                f"{loop.rate:.1f}/s",
                f"cycle p50 {ms(loop.p(50))}, p99 {ms(loop.p(99))}",
                "Sustained lifecycles",
            )
        )
        await describe(b, loop, f"lifecycle floor ({kind} activities)", FLOOR_PHASES)
        loops.append(loop)
    b.floor_lifecycle_rate = loops[0].rate
    return loops[0], loops[1]


async def run(b: Bench) -> None:
    measured = None
    if b.product:
        role = b.stack.role("lc")
        b.watcher.watch([role], interval=0.01)
        loop = await closed_loop(b, product_cycle(b.stack, b, role), PHASES)
        measured = loop, bare_floor(b.stack)
        b.lifecycle_rate = loop.rate
    floors = await engine_floors(b) if b.floors else None
    if measured is None:
        return
    loop, floor_rate = measured
    engine, engine_ratio = "-", "-"
    if floors is not None:
        regular, local = floors
        engine = f"minimal workflow: {regular.rate:.1f}/s (local activities {local.rate:.1f}/s)"
        engine_ratio = f"{rate_ratio(loop.rate, regular.rate)} (local {rate_ratio(loop.rate, local.rate)})"
    b.report.add(
        Row(
            f"Sustained lifecycles, {b.counts.lifecycle_concurrency} clients for {loop.window:g} s "
            f"(n={len(loop.done)})",
            f"{loop.rate:.1f}/s",
            f"cycle p50 {ms(loop.p(50))}, p99 {ms(loop.p(99))}",
            ">= 50/s",
            f"bare GRANT+REVOKE: {floor_rate:.0f}/s",
            f"{loop.rate / floor_rate:.3f}x" if floor_rate else "n/a",
            engine,
            engine_ratio,
        )
    )
    await describe(b, loop, "lifecycles", PHASES)
