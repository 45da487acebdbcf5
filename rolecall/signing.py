"""Decisions signed by the Slack app, verified by the worker: who really clicked.

Contract: pure functions, no I/O. The key (`ROLECALL_DECISION_KEY`) is shared only by the
Slack app and the worker; it never enters a workflow history (the workflow asks a local
activity to verify). The signature covers everything that makes a decision: the request, the
signal, the actor's email, the Slack user ID and when it was made, so an edited field, a
signature moved to another request or signal, or a stale one does not verify.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

from rolecall.models import Decision

# A signed decision older than this (or this far in the future) is refused: a Slack click
# reaches the workflow within seconds, so a late one is a replay.
MAX_AGE = timedelta(minutes=5)
_VERSION = "v1"


def _message(request_id: str, signal: str, actor: str, slack_user_id: str, at: datetime) -> bytes:
    when = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return "\n".join([_VERSION, request_id, signal, actor.strip().lower(), slack_user_id, when]).encode()


def sign(key: bytes, request_id: str, signal: str, decision: Decision, at: datetime) -> Decision:
    """The decision as the Slack app sends it: stamped with the time and its signature."""
    assert decision.slack_user_id, "only a decision made in Slack is signed"
    mac = hmac.new(
        key, _message(request_id, signal, decision.actor, decision.slack_user_id, at), hashlib.sha256
    )
    return decision.model_copy(update={"signed_at": at, "signature": f"{_VERSION}={mac.hexdigest()}"})


def verify(key: bytes, request_id: str, signal: str, decision: Decision, now: datetime) -> str | None:
    """None when the signature is good and fresh; else why not, in words for the audit trail."""
    if not decision.signature or decision.signed_at is None or not decision.slack_user_id:
        return "not signed"
    expected = sign(key, request_id, signal, decision, decision.signed_at).signature or ""
    if not hmac.compare_digest(expected, decision.signature):
        return "signature does not match (edited, or signed for another request or action)"
    age = now - decision.signed_at
    if abs(age) > MAX_AGE:
        return (
            f"signature is {int(abs(age).total_seconds())}s old (more than {int(MAX_AGE.total_seconds())}s)"
        )
    return None
