"""What a rule demands of a request before anything starts: pure, shared by the CLI, the Slack
modal and the check activity, so all three refuse the same request with the same line."""

from __future__ import annotations

import re

from rolecall.errors import BadReason, BreakGlassNotAllowed
from rolecall.models import AppliedRule


def check_reason(rule: AppliedRule, reason: str, break_glass: bool) -> None:
    """Refuse a missing or non-matching reason, and break-glass where the rule has none."""
    if break_glass and not rule.break_glass:
        raise BreakGlassNotAllowed(f"rule {rule.name!r} does not allow break-glass (emergency) access")
    text = reason.strip()
    if (rule.require_reason or rule.reason_pattern or break_glass) and not text:
        why = "break-glass access needs a reason" if break_glass else f"rule {rule.name!r} needs a reason"
        hint = f" matching {rule.reason_pattern}" if rule.reason_pattern else ""
        raise BadReason(f"{why}{hint}")
    if rule.reason_pattern and not re.search(rule.reason_pattern, text):
        raise BadReason(
            f"reason {text!r} does not match what rule {rule.name!r} expects: {rule.reason_pattern}"
        )
