"""Durations as people write them: `90s`, `15m`, `2h`, `1h30m`, `1d`."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)([dhms])")
_WHOLE = re.compile(r"(?:\d+[dhms])+")
# Nobody needs a temporary grant longer than this; anything larger is a typo or an attack.
ABSURD = timedelta(days=366)


def parse_duration(text: str) -> timedelta:
    """Parse `1h30m`-style text; raise ValueError with a message fit for a person."""
    s = text.strip().lower()
    if not s:
        raise ValueError("duration is empty: use e.g. 90s, 15m, 2h or 1h30m")
    if s.startswith("-"):
        raise ValueError(f"duration {text!r} is negative")
    if not _WHOLE.fullmatch(s):
        raise ValueError(f"duration {text!r} is not understood: use e.g. 90s, 15m, 2h or 1h30m")
    seen: set[str] = set()
    seconds = 0
    for number, unit in _PART.findall(s):
        if unit in seen:
            raise ValueError(f"duration {text!r} repeats the unit {unit!r}")
        seen.add(unit)
        seconds += int(number) * _UNITS[unit]
        if seconds > ABSURD.total_seconds():
            raise ValueError(f"duration {text!r} is longer than a year")
    if seconds <= 0:
        raise ValueError(f"duration {text!r} is zero")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The inverse of parse_duration, shortest form: 5400 s -> `1h30m`."""
    total = int(value.total_seconds())
    if total <= 0:
        return "0s"
    out = []
    for unit, size in _UNITS.items():
        n, total = divmod(total, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)
