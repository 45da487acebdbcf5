"""The request's privileges snapshot: what the approvers' card shows, and the drift baseline.

Histories stay small whatever the role's size: the summary is one line (SUMMARY_MAX), the
grouped detail is cut to DETAIL_MAX (what one Slack section holds), and the whole
`Privileges` is kept only while its JSON is under KEEP_MAX. Past that only a digest and
counts are kept: a change is still detected (digest), but not named, and any change, even a
loss, holds the grant, since nothing kept can prove it was not a gain.
"""

from __future__ import annotations

import hashlib

from rolecall.models import PrivilegesSnapshot
from rolecall.privileges.model import Privileges, diff
from rolecall.privileges.render import render_text, summary

DETAIL_MAX = 2900
KEEP_MAX = 8000  # bytes of Privileges JSON kept whole; 2 tables are ~1 KB, 500 about 90 KB
# Not what a role grants, but how it was read: left out of the digest.
_METADATA = {"databases", "unreadable", "notes", "already_held", "server_version", "verdict"}


def digest(p: Privileges) -> str:
    canonical = p.model_copy(deep=True).sort().model_dump_json(exclude=_METADATA)
    return hashlib.sha256(canonical.encode()).hexdigest()


def counts(p: Privileges) -> dict[str, int]:
    return {
        "grants": len(p.grants),
        "set_role_only": len(p.set_role_only),
        "memberships": len(p.memberships),
        "default_privileges": len(p.default_privileges),
        "rls": len(p.rls),
    }


def cut_lines(text: str, limit: int = DETAIL_MAX) -> str:
    """Whole lines while they fit, then how many were left out and where to see them all."""
    if len(text) <= limit:
        return text
    lines = text.rstrip("\n").split("\n")
    kept: list[str] = []
    used = 0
    for i, line in enumerate(lines):
        tail = f"… and {len(lines) - i} more lines; `rolecall explain` lists all"
        if used + len(line) + 1 + len(tail) > limit:
            return "\n".join([*kept, tail])
        kept.append(line)
        used += len(line) + 1
    return "\n".join(kept)  # not reached: the text was over the limit


def snapshot(p: Privileges, seconds: float) -> PrivilegesSnapshot:
    whole = p.model_dump_json()
    return PrivilegesSnapshot(
        summary=summary(p),
        detail=cut_lines(render_text(p)),
        privileges=p if len(whole.encode()) <= KEEP_MAX else None,
        digest=digest(p),
        counts=counts(p),
        seconds=round(seconds, 3),
    )


def unreadable(why: str) -> PrivilegesSnapshot:
    return PrivilegesSnapshot(readable=False, summary=f"privileges could not be read: {why}")


def gained(before: PrivilegesSnapshot, now: Privileges) -> str | None:
    """One line saying what the role gained since `before`, or None when it gained nothing."""
    if before.privileges is not None:
        d = diff(before.privileges, now)
        parts = []
        new_roles = [m.role for m in d.memberships]
        if new_roles:
            parts.append("now a member of " + ", ".join(new_roles))
        if not d.empty or d.bypass_rls or d.lasting:
            # Which databases could not be read is said by the new card, not by the change.
            parts.append(summary(d.model_copy(update={"unreadable": []})))
        return "; ".join(parts) if parts else None
    if before.digest == digest(now):
        return None
    then, later = before.counts, counts(now)
    return (
        f"its privileges changed ({then.get('grants', 0)} privileges then, {later['grants']} now; "
        "too many to compare one by one)"
    )
