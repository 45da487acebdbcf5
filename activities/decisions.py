"""Verify that a decision really came from the Slack app: a local activity, so the key stays out
of the workflow history (only the signature and the verdict are recorded).

Contract: reads the key given at construction and the clock; no other I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity

from rolecall.models import Verified, VerifyDecision
from rolecall.signing import verify


class DecisionActivities:
    def __init__(self, key: bytes | None) -> None:
        self._key = key

    @activity.defn(name="verify_decision")
    async def verify_decision(self, inp: VerifyDecision) -> Verified:
        if not self._key:
            return Verified(
                ok=False, why="this worker has no ROLECALL_DECISION_KEY to verify signatures with"
            )
        why = verify(self._key, inp.request_id, inp.signal, inp.decision, datetime.now(UTC))
        return Verified(ok=why is None, why=why or "")
