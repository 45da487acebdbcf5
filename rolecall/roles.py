"""A requestable role is written as a name (`app_read`) or a glob (`app_*`): told apart here only.

A glob is any entry holding `*`, `?` or `[`; it matches case-sensitively (`fnmatchcase`), as
PostgreSQL compares role names. Everything that lists, offers or checks requestable roles
(config, doctor, setup-sql, the Slack modal) goes through these functions.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

GLOB_CHARS = frozenset("*?[")


def is_pattern(entry: str) -> bool:
    return not GLOB_CHARS.isdisjoint(entry)


def matches(entry: str, role: str) -> bool:
    """Whether the config entry names `role`: the glob matches it, or it is that very name."""
    return fnmatch.fnmatchcase(role, entry) if is_pattern(entry) else role == entry


def names(entries: Iterable[str]) -> list[str]:
    """The entries that are plain role names, in order (what can be offered without a database)."""
    return [e for e in entries if not is_pattern(e)]


def patterns(entries: Iterable[str]) -> list[str]:
    """The entries that are globs, in order."""
    return [e for e in entries if is_pattern(e)]
