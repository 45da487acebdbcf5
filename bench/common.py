"""Counts, number formatting and small process helpers that every figure shares."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RUN_PY = BENCH / "run.py"
SECRET = "bench-signing-secret"
TOKEN = "xoxb-bench"
APPROVER_EMAIL = "dba@example.com"
APPROVER_SLACK = "UDBA"
CHANNEL = "CAPPROVERS"
DSN_ENV = "ROLECALL_BENCH_ADMIN_DSN"
TASK_QUEUE = "rolecall-bench"
FLOOR_TASK_QUEUE = "rolecall-bench-floor"


def repo_on_path() -> None:
    """`tests.fake_slack` and `bench.*` are not installed; the rest of the repo is (editable install)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


# ---- counts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    ack_rate: float = 20.0
    ack_seconds: float = 30.0
    ack_floor_seconds: float = 10.0
    # A p99 of 50 is the second-slowest sample: one slow run of either side decided the ratio
    # (2026-12-03: the floor's p99 was 119 ms against a median of 15.8 ms). 200 each costs ~2.5 min.
    clicks: int = 200
    lifecycle_seconds: float = 60.0
    lifecycle_concurrency: int = 24
    burst: int = 300  # requests to one approvers' channel under Slack's rate limit
    mass: int = 1000
    # The goal's count: requests are created at the product's own pace (a check, an approval,
    # a grant and its notifications each), which is most of the full run's time.
    memory: int = 10000
    # Extra counts at which the memory floor (minimal workflows, created at the engine's pace)
    # is also measured; the mass and memory figures' own counts always are.
    memory_floor: tuple[int, ...] = (1000, 10000)
    create_concurrency: int = 48
    # The mass-expiry grants are created this many at a time, so that each one's lead from
    # submit to grant stays short and steady, and their expiries land in about one second.
    mass_create_concurrency: int = 6
    startups: int = 3
    logins: int = 1000


FULL = Counts()
QUICK = Counts(
    ack_seconds=5,
    ack_floor_seconds=3,
    clicks=10,
    lifecycle_seconds=10,
    lifecycle_concurrency=12,
    burst=60,
    mass=100,
    memory=1000,
    memory_floor=(),
    startups=2,
)


# ---- numbers ---------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    value = seconds * 1000
    return f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms" if value >= 1 else f"{value:.2f} ms"


def secs(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds:.2f} s"


def ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b <= 0:
        return "n/a"
    return f"{a / b:.1f}x"


def rate_ratio(a: float, b: float) -> str:
    """A throughput ratio: small numbers keep their digits (0.005x)."""
    if math.isnan(a) or math.isnan(b) or b <= 0:
        return "n/a"
    value = a / b
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- concurrency -----------------------------------------------------------------------------


async def bounded(concurrency: int, items: list[Any], fn: Callable[[Any], Awaitable[Any]]) -> list[Any]:
    sem = asyncio.Semaphore(concurrency)

    async def one(item: Any) -> Any:
        async with sem:
            return await fn(item)

    return await asyncio.gather(*(one(i) for i in items), return_exceptions=True)


def errors_of(results: list[Any]) -> list[BaseException]:
    return [r for r in results if isinstance(r, BaseException)]


# ---- processes (/proc) -------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def python_child(pid: int) -> int:
    """The pid to measure: `pid` itself, or its child when it is py-spy running python."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return pid
    if "py-spy" not in exe:
        return pid
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        if children:
            return int(children[0])
    return pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (its reaped children not included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if (d / "comm").read_text().strip() in ("postgres", "postmaster"):
                    pids.append(int(d.name))
    return pids
