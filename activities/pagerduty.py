"""On-call check for auto-approval. The only module that may import pdpyras."""

from __future__ import annotations

from temporalio import activity

from rolecall.config import ConfigStore
from rolecall.models import OnCallCheck, OnCallResult


class PagerDutyActivities:
    def __init__(self, config: ConfigStore) -> None:
        self._config = config

    @activity.defn(name="check_oncall")
    async def check_oncall(self, inp: OnCallCheck) -> OnCallResult:
        """Never raises: any failure means "ask a human", never "deny" or "approve"."""
        pd = self._config.get().pagerduty
        if not pd.enabled:
            return OnCallResult(on_call=False, checked=False, detail="")
        return OnCallResult(on_call=False, checked=False, detail="PagerDuty on-call check not available yet")
