"""What a figure gets: the stack, the counts, the report, and which halves to measure."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from bench.common import Counts, say
from bench.report import Report
from bench.stack import Child, Stack, Watcher, start_worker


@dataclass
class Bench:
    stack: Stack
    counts: Counts
    report: Report
    watcher: Watcher
    profile: bool = False
    product: bool = True  # measure the product figures (and their bare-SQL floors)
    floors: bool = True  # measure the engine floors
    rss_idle: float = math.nan  # the product worker's, after start-up
    floor_rss_idle: float = math.nan  # the floor worker's, after start-up
    lifecycle_rate: float = 10.0  # product lifecycles/s, once measured (paces the mass figure)
    floor_lifecycle_rate: float = math.nan  # the minimal lifecycle's, once measured

    async def floor_worker(self) -> Child:
        """The engine floors' worker process, started on first use (idle RSS read 2 s later)."""
        if self.stack.floor_worker is None:
            child = start_worker(self.stack, self.profile, "floor-worker", "_floor_worker")
            self.stack.floor_worker = child
            await child.wait_for_line("bench floor worker ready", 60)
            await asyncio.sleep(2)
            self.floor_rss_idle = child.rss()
            say(f"floor worker ready; idle RSS {self.floor_rss_idle:.0f} MB")
        return self.stack.floor_worker
