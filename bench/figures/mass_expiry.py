"""Mass expiry: N grants that expire in the same second; lateness of each REVOKE.

Product: N real requests (submit + approve), durations chosen to expire together; the watcher
records when each membership disappears. Lateness = that moment - the request's `expires_at`.
Floors: N bare REVOKEs in one loop on one connection; and the engine's: N minimal workflows
that sleep until one instant, then run one bare REVOKE activity, watched the same way.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import product
from bench.common import (
    APPROVER_EMAIL,
    FLOOR_TASK_QUEUE,
    bounded,
    errors_of,
    ms,
    pct,
    ratio,
    say,
    secs,
)
from bench.context import Bench
from bench.report import FloorRow, Row
from bench.stack import CpuMeter, Stack


@dataclass
class Expiry:
    lateness: list[float] = field(default_factory=list)
    last: float = math.nan  # the last disappearance - the (earliest) expiry instant
    spread: float = 0.0  # of the expiry instants
    created_in: float = math.nan


async def _create(b: Bench, role: str, expiry: float) -> tuple[list[Any], float]:
    """Grant N requests at concurrency, each with a duration that ends at `expiry`."""
    stack = b.stack
    delays: list[float] = []
    started = time.monotonic()

    async def create(i: int) -> str:
        login = stack.logins[i]
        lead = statistics.median(delays[-20:]) if delays else 0.3
        t_sub = time.time()
        duration = max(1.0, expiry - t_sub - lead)
        rid = await product.submit(stack, i, role, timedelta(seconds=duration))
        await product.send_signal(stack, rid, "approve", APPROVER_EMAIL)
        seen = await b.watcher.wait((login, role), True, 120)
        delays.append(seen - t_sub)
        return rid

    rids = await bounded(b.counts.mass_create_concurrency, list(range(b.counts.mass)), create)
    return rids, time.monotonic() - started


async def _until_all_gone(b: Bench, left: float) -> None:
    deadline = time.monotonic() + max(0.0, left) + 120
    while b.watcher.members and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)


async def _product(b: Bench) -> tuple[Expiry, float]:
    """The figure, and the worker's RSS with all N granted and waiting (before they expire)."""
    stack, n = b.stack, b.counts.mass
    role = stack.role("mass")
    b.watcher.watch([role], interval=0.01)
    create_rate = max(5.0, b.lifecycle_rate * 1.2)
    expiry = time.time() + 1.6 * n / create_rate + 15
    say(f"mass expiry: creating {n} grants to expire at +{expiry - time.time():.0f}s")
    rids, created_in = await _create(b, role, expiry)
    bad = errors_of(rids)
    if bad:
        b.report.note(f"mass expiry: {len(bad)} grants failed to set up: {bad[:2]!r}")
    await asyncio.sleep(2)
    rss_open = stack.worker_rss()
    left = expiry - time.time()
    b.report.raw["mass_create_s"] = created_in
    b.report.raw["rss_mass_open"] = rss_open
    say(f"mass expiry: {n - len(bad)} granted in {created_in:.1f}s; worker RSS {rss_open:.0f} MB; "
        f"expiry in {left:.1f}s")  # fmt: skip
    good = [(i, r) for i, r in enumerate(rids) if not isinstance(r, BaseException)]
    await asyncio.sleep(max(0.0, left - 1))
    began = time.time()
    with CpuMeter(stack) as cpu:
        await _until_all_gone(b, 1.0)
    during = stack.collections("worker", began, time.time())
    b.report.note(
        f"mass expiry: from 1 s before the first expiry until all were gone: {_cpu(cpu, n)}; {during}"
    )
    results = await bounded(32, [r for _, r in good], lambda rid: product.result(stack, rid))
    out = Expiry(created_in=created_in)
    expires: list[float] = []
    gone_at: list[float] = []
    for (i, _), res in zip(good, results, strict=True):
        if isinstance(res, BaseException) or res.expires_at is None:
            continue
        pair = (stack.logins[i], role)
        exp = res.expires_at.timestamp()
        expires.append(exp)
        if pair in b.watcher.gone:
            gone_at.append(b.watcher.gone[pair])
            out.lateness.append(b.watcher.gone[pair] - exp)
    out.last = max(gone_at) - min(expires) if gone_at and expires else math.nan
    out.spread = max(expires) - min(expires) if expires else math.nan
    sample = [(rid, res.expires_at.timestamp()) for (_, rid), res in zip(good, results, strict=True)
              if not isinstance(res, BaseException) and res.expires_at is not None][::10]  # fmt: skip
    offsets = await bounded(8, sample, lambda x: product.event_offsets(stack, str(x[0]), x[1], "TIMER_FIRED"))
    b.report.note(
        f"mass expiry: from each request's expires_at to the events after its timer fired "
        f"({len(sample)} requests, every 10th): " + product.median_offsets(offsets)
    )
    return out, rss_open


def _bulk(stack: Stack, verb: str, role: str, n: int) -> float:
    """N bare GRANTs or REVOKEs in one loop on one connection; seconds taken."""
    import psycopg
    from psycopg import sql

    stmt = sql.SQL("GRANT {} TO {}") if verb == "GRANT" else sql.SQL("REVOKE {} FROM {}")
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        t = time.monotonic()
        for i in range(n):
            conn.execute(stmt.format(sql.Identifier(role), sql.Identifier(stack.logins[i])))
        return time.monotonic() - t


def bare_floor(stack: Stack, n: int) -> float:
    """The same number of memberships, then one loop of bare REVOKEs on one connection."""
    role = stack.floor_role("f_mass")
    _bulk(stack, "GRANT", role, n)
    return _bulk(stack, "REVOKE", role, n)


async def engine_floor(b: Bench) -> Expiry:
    """N minimal workflows sleeping to one whole second, then one bare REVOKE each."""
    from bench.floors.models import FloorInput
    from bench.floors.workflows import ExpiryFloor

    await b.floor_worker()
    stack, n = b.stack, b.counts.mass
    role = stack.floor_role("f_expire")
    await asyncio.to_thread(_bulk, stack, "GRANT", role, n)
    b.watcher.watch([role], interval=0.01)
    await b.watcher.wait_count(n, 30)
    # Starting one costs about a third of a minimal lifecycle: leave twice the time it needs.
    start_rate = 3 * b.floor_lifecycle_rate if not math.isnan(b.floor_lifecycle_rate) else 30.0
    expiry = float(math.ceil(time.time() + 10 + 2 * n / max(start_rate, 10.0)))
    at = datetime.fromtimestamp(expiry, UTC)
    started = time.monotonic()

    async def start(i: int) -> Any:
        inp = FloorInput(login=stack.logins[i], role=role, expires_at=at)
        return await stack.client.start_workflow(
            ExpiryFloor.run, inp, id=f"floor-expire/{stack.prefix}/{i}", task_queue=FLOOR_TASK_QUEUE
        )

    handles = await bounded(b.counts.create_concurrency, list(range(n)), start)
    out = Expiry(created_in=time.monotonic() - started)
    spare = expiry - time.time()
    await asyncio.sleep(max(0.0, spare - 1))
    began = time.time()
    with CpuMeter(stack) as cpu:
        await _until_all_gone(b, 1.0)
    during = stack.collections("floor-worker", began, time.time())
    b.report.note(
        f"mass expiry floor: from 1 s before the instant until all were gone: {_cpu(cpu, n)}; {during}"
    )
    good = [h for h in handles if not isinstance(h, BaseException)]
    results = await bounded(32, good, lambda h: asyncio.wait_for(h.result(), 120))
    gone = [t for (_, r), t in b.watcher.gone.items() if r == role]
    out.lateness = [t - expiry for t in gone]
    out.last = max(gone) - expiry if gone else math.nan
    own = [r.revoked_at - expiry for r in results if not isinstance(r, BaseException) and r.revoked_at]
    b.report.note(
        f"mass expiry floor: {len(good)} of {n} started in {out.created_in:.1f}s "
        f"({n / out.created_in:.0f}/s at concurrency {b.counts.create_concurrency}), {spare:.1f}s before "
        f"the instant; lateness seen by the activity itself (commit - instant): p50 {ms(pct(own, 50))}, "
        f"p99 {ms(pct(own, 99))}, max {ms(max(own, default=math.nan))}"
    )
    return out


def _cpu(cpu: CpuMeter, n: int) -> str:
    used = sorted(cpu.used.items(), key=lambda kv: -kv[1])
    per = ", ".join(f"{k} {v * 1000 / n:.1f}" for k, v in used if v > 0.01)
    return f"{cpu.wall:.1f} s, {cpu.describe()}; CPU ms per expiry: {per}"


def _floor_row(f: Expiry, n: int) -> FloorRow:
    return FloorRow(
        f"Mass expiry: {n} minimal workflows sleeping to one instant, one bare REVOKE activity "
        f"(n={len(f.lateness)}/{n})",
        f"lateness p50 {ms(pct(f.lateness, 50))}",
        f"lateness p99 {ms(pct(f.lateness, 99))}, max {ms(max(f.lateness, default=math.nan))}; "
        f"last REVOKE {secs(f.last)} after the instant",
        "Mass expiry",
    )


def _rows(b: Bench, p: Expiry, floor: float, f: Expiry | None, rss_open: float) -> None:
    n = b.counts.mass
    engine, engine_ratio = "-", "-"
    if f is not None:
        engine = (f"minimal workflows: last REVOKE {secs(f.last)} after the instant; "
                  f"lateness p50 {ms(pct(f.lateness, 50))} / p99 {ms(pct(f.lateness, 99))}")  # fmt: skip
        # The floor's expiries share one instant, so its last REVOKE after it is its largest
        # lateness; the product's is compared likewise, its own expiries' spread left out.
        p99 = ratio(pct(p.lateness, 99), pct(f.lateness, 99))
        engine_ratio = f"{ratio(max(p.lateness, default=math.nan), f.last)} (p99 lateness {p99})"
    b.report.add(
        Row(
            f"Mass expiry: {n} grants, all revoked (n={len(p.lateness)}/{n})",
            f"lateness p50 {ms(pct(p.lateness, 50))}",
            f"lateness p99 {ms(pct(p.lateness, 99))}, max {ms(max(p.lateness, default=math.nan))}; "
            f"last REVOKE {secs(p.last)} after the first expiry",
            "all within 10 s",
            f"{n} bare REVOKEs: {secs(floor)}",
            ratio(p.last, floor),
            engine,
            engine_ratio,
        )
    )
    b.report.note(
        f"mass expiry: expires_at spread {secs(p.spread)} across the {len(p.lateness)} grants; "
        f"creating them took {p.created_in:.1f}s ({n / p.created_in:.0f}/s "
        f"at concurrency {b.counts.mass_create_concurrency})"
    )
    per = (rss_open - b.rss_idle) / n
    b.report.raw[f"rss_per_open:{n}"] = per
    b.report.add(
        Row(
            f"Worker RSS, {n} open (granted, waiting) requests",
            f"{rss_open:.0f} MB",
            f"{per * 1024:.0f} KB per open request; measured before the mass expiry",
            "-",
            f"idle worker {b.rss_idle:.0f} MB",
            ratio(rss_open, b.rss_idle),
            key=f"rss:{n}",  # the memory figure's floor fills in the engine columns
        )
    )


async def run(b: Bench) -> None:
    n = b.counts.mass
    measured = None
    if b.product:
        p, rss_open = await _product(b)
        measured = p, bare_floor(b.stack, n), rss_open
    f = await engine_floor(b) if b.floors else None
    if f is not None:
        b.report.add_floor(_floor_row(f, n))
    if measured is not None:
        _rows(b, measured[0], measured[1], f, measured[2])
