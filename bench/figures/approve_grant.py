"""Approve click -> role granted: one signed Approve click at a time, until `pg_has_role`.

Floors: a bare GRANT on an open connection (and connect + GRANT + close), and the engine's:
a minimal workflow waiting for a signal, then one bare GRANT activity, timed from the signal
sent until the GRANT is visible, polled the same way.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any

from bench import product
from bench.common import APPROVER_SLACK, FLOOR_TASK_QUEUE, bounded, errors_of, ms, pct, ratio
from bench.context import Bench
from bench.report import FloorRow, Row
from bench.slack_driver import Sender
from bench.stack import Stack

Conn = Any  # psycopg.AsyncConnection, imported lazily


async def _until_member(conn: Conn, login: str, role: str, started: float) -> float:
    """Seconds from `started` until the membership is visible; NaN after 15 s."""
    deadline = started + 15
    while time.monotonic() < deadline:  # tight poll: one round trip, then 1 ms
        cur = await conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", [login, role])
        row = await cur.fetchone()
        if row and row[0]:
            return time.monotonic() - started
        await asyncio.sleep(0.001)
    return math.nan


async def _one_at_a_time(
    conn: Conn, stack: Stack, role: str, n: int, send: Callable[[int], Coroutine[Any, Any, float]]
) -> tuple[list[float], list[float]]:
    """For each of n: send (it returns its own time), time until granted; 0.3 s between."""
    granted: list[float] = []
    sent: list[float] = []
    for i in range(n):
        started = time.monotonic()
        task = asyncio.create_task(send(i))
        lat = await _until_member(conn, stack.logins[i], role, started)
        sent.append(await task)
        if not math.isnan(lat):
            granted.append(lat)
        await asyncio.sleep(0.3)  # let the app's post-click status loop finish
    return granted, sent


async def _bare_floor(conn: Conn, stack: Stack, n: int) -> tuple[list[float], list[float]]:
    """The same memberships granted by a bare GRANT on an open connection, then on a new one."""
    import psycopg
    from psycopg import sql

    role = sql.Identifier(stack.floor_role("f_grant"))
    floor: list[float] = []
    floor_connect: list[float] = []
    for i in range(n):
        login = sql.Identifier(stack.logins[i])
        stmt = sql.SQL("GRANT {} TO {}").format(role, login)
        t = time.monotonic()
        await conn.execute(stmt)
        floor.append(time.monotonic() - t)
        await conn.execute(sql.SQL("REVOKE {} FROM {}").format(role, login))
        t = time.monotonic()
        async with await psycopg.AsyncConnection.connect(stack.dsn, autocommit=True) as c2:
            await c2.execute(stmt)
        floor_connect.append(time.monotonic() - t)
        await conn.execute(sql.SQL("REVOKE {} FROM {}").format(role, login))
    return floor, floor_connect


async def _give_back(stack: Stack, role: str, rids: list[str]) -> None:
    """Relinquish the granted ones, cancel the rest: later figures start from nothing open."""
    members = {str(r[0]) for r in stack.pg(
        "SELECT u.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE r.rolname = %s", [role])}  # fmt: skip

    def signal(x: tuple[int, str]) -> Awaitable[None]:
        login = stack.logins[x[0]]
        name = "relinquish" if login in members else "cancel"
        return product.send_signal(stack, x[1], name, stack.email(login))

    await bounded(16, list(enumerate(rids)), signal)
    await bounded(16, rids, lambda rid: product.result(stack, rid))


async def _product(b: Bench) -> tuple[list[float], list[float], list[float], list[float]]:
    """(click -> granted, the click's own HTTP 200, bare GRANT, connect + GRANT + close)."""
    import psycopg

    stack, n = b.stack, b.counts.clicks
    role = stack.role("click")
    rids = await bounded(8, list(range(n)), lambda i: product.submit(stack, i, role, timedelta(hours=1)))
    if errors_of(rids):
        raise RuntimeError(f"click set-up failed: {errors_of(rids)[:3]}")
    await asyncio.sleep(2)  # the "requested" notifications settle
    url = f"http://127.0.0.1:{stack.app_port}/slack/events"
    clicked_at: dict[int, float] = {}
    async with (
        Sender(url, stack.fake_url) as sender,
        await psycopg.AsyncConnection.connect(stack.dsn, autocommit=True) as conn,
    ):

        async def click(i: int) -> float:
            clicked_at[i] = time.time()
            _, acked = await sender.post(sender.approve_click(APPROVER_SLACK, str(rids[i])))
            return acked

        began = time.time()
        grant_lat, ack_lat = await _one_at_a_time(conn, stack, role, n, click)
        ended = time.time()
        b.report.note(f"approve click: during the clicks, {stack.collections('worker', began, ended)}")
        b.report.note(f"approve click: during the clicks, {stack.collections('app', began, ended)}")
        floor, floor_connect = await _bare_floor(conn, stack, n)
    phases = await bounded(
        8,
        list(clicked_at.items()),
        lambda x: product.event_offsets(stack, str(rids[x[0]]), x[1], "WORKFLOW_EXECUTION_UPDATE_ACCEPTED"),
    )
    b.report.note(
        "approve click: from the click to each event from the decision's workflow task on "
        "(history event times): " + (product.median_offsets(phases) or f"not read: {errors_of(phases)[:1]}")
    )
    await _give_back(stack, role, rids)
    return grant_lat, ack_lat, floor, floor_connect


async def engine_floor(b: Bench) -> tuple[list[float], list[float]]:
    """(signal sent -> GRANT visible, the signal RPC's own time), one workflow at a time."""
    import psycopg
    from psycopg import sql

    from bench.floors.models import FloorInput, Nudge
    from bench.floors.workflows import SignalGrantFloor

    await b.floor_worker()
    stack, n = b.stack, b.counts.clicks
    role = stack.floor_role("f_click")

    async def start(i: int) -> Any:
        return await stack.client.start_workflow(
            SignalGrantFloor.run, FloorInput(login=stack.logins[i], role=role),
            id=f"floor-click/{stack.prefix}/{i}", task_queue=FLOOR_TASK_QUEUE,
        )  # fmt: skip

    handles = await bounded(8, list(range(n)), start)
    if errors_of(handles):
        raise RuntimeError(f"signal->GRANT floor set-up failed: {errors_of(handles)[:3]}")
    await asyncio.sleep(2)  # as the product's: every workflow is waiting for its signal

    async def signal(i: int) -> float:
        t = time.monotonic()
        await handles[i].signal(SignalGrantFloor.approve, Nudge())
        return time.monotonic() - t

    async with await psycopg.AsyncConnection.connect(stack.dsn, autocommit=True) as conn:
        began = time.time()
        lat, sent = await _one_at_a_time(conn, stack, role, n, signal)
        during = stack.collections("floor-worker", began, time.time())
        b.report.note(f"signal->GRANT floor: during the signals, {during}")
        await bounded(16, handles, lambda h: asyncio.wait_for(h.result(), 60))
        for i in range(n):
            await conn.execute(
                sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(role), sql.Identifier(stack.logins[i]))
            )
    return lat, sent


def _engine_cells(grant_lat: list[float], floor_lat: list[float] | None) -> tuple[str, str]:
    if floor_lat is None:
        return "-", "-"
    p50 = ratio(pct(grant_lat, 50), pct(floor_lat, 50))
    return (
        f"signal -> GRANT workflow: {ms(pct(floor_lat, 50))} / {ms(pct(floor_lat, 99))}",
        f"{p50} (p99 {ratio(pct(grant_lat, 99), pct(floor_lat, 99))})",
    )


async def run(b: Bench) -> None:
    n = b.counts.clicks
    measured = await _product(b) if b.product else None
    floor_lat: list[float] | None = None
    if b.floors:
        floor_lat, sent = await engine_floor(b)
        b.report.add_floor(
            FloorRow(
                f"Signal -> GRANT: minimal workflow, one bare GRANT activity (n={len(floor_lat)}/{n})",
                ms(pct(floor_lat, 50)),
                ms(pct(floor_lat, 99)),
                "Approve click -> role granted",
            )
        )
        b.report.note(
            f"signal->GRANT floor: the signal RPC itself took p50 {ms(pct(sent, 50))}, "
            f"p99 {ms(pct(sent, 99))}"
        )
    if measured is None:
        return
    grant_lat, ack_lat, floor, floor_connect = measured
    b.report.add(
        Row(
            f"Approve click -> role granted (n={len(grant_lat)}/{n})",
            ms(pct(grant_lat, 50)),
            ms(pct(grant_lat, 99)),
            "p99 < 300 ms",
            f"bare GRANT: {ms(pct(floor, 50))} / {ms(pct(floor, 99))}",
            f"{ratio(pct(grant_lat, 50), pct(floor, 50))} (p99 {ratio(pct(grant_lat, 99), pct(floor, 99))})",
            *_engine_cells(grant_lat, floor_lat),
        )
    )
    b.report.note(
        f"approve click: the click's own HTTP 200 took p50 {ms(pct(ack_lat, 50))}, "
        f"p99 {ms(pct(ack_lat, 99))}; "
        f"a bare GRANT on a new connection (connect + GRANT + close) takes p50 {ms(pct(floor_connect, 50))}"
    )
