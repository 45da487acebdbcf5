"""Minimal workflows: the least a Temporal workflow can do for each figure's job.

Each one does only what its figure's definition needs (wait for a signal, a timer, one bare
GRANT or REVOKE), so the figure's ratio to it is what rolecall itself adds on this engine.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from bench.floors.activities import FloorActivities
    from bench.floors.models import Committed, FloorInput, FloorResult, Hold, Membership, Nudge

_TIMEOUT = timedelta(seconds=30)


async def _call(grant: bool, inp: FloorInput) -> Committed:
    """One bare GRANT or REVOKE, as a regular or a local activity."""
    fn = FloorActivities.grant if grant else FloorActivities.revoke
    m = Membership(login=inp.login, role=inp.role)
    if inp.local:
        return await workflow.execute_local_activity_method(fn, m, start_to_close_timeout=_TIMEOUT)
    return await workflow.execute_activity_method(fn, m, start_to_close_timeout=_TIMEOUT)


@workflow.defn
class LifecycleFloor:
    """start -> signal -> GRANT -> signal -> REVOKE -> complete."""

    def __init__(self) -> None:
        self._approved = False
        self._released = False

    @workflow.run
    async def run(self, inp: FloorInput) -> FloorResult:
        await workflow.wait_condition(lambda: self._approved)
        granted = await _call(True, inp)
        await workflow.wait_condition(lambda: self._released)
        revoked = await _call(False, inp)
        return FloorResult(granted_at=granted.at, revoked_at=revoked.at)

    @workflow.signal
    def approve(self, _: Nudge) -> None:
        self._approved = True

    @workflow.signal
    def release(self, _: Nudge) -> None:
        self._released = True


@workflow.defn
class SignalGrantFloor:
    """signal -> GRANT -> complete (the approve click's floor)."""

    def __init__(self) -> None:
        self._approved = False

    @workflow.run
    async def run(self, inp: FloorInput) -> FloorResult:
        await workflow.wait_condition(lambda: self._approved)
        granted = await _call(True, inp)
        return FloorResult(granted_at=granted.at)

    @workflow.signal
    def approve(self, _: Nudge) -> None:
        self._approved = True


@workflow.defn
class ExpiryFloor:
    """A timer to `expires_at`, then one REVOKE (the mass expiry's floor)."""

    @workflow.run
    async def run(self, inp: FloorInput) -> FloorResult:
        assert inp.expires_at is not None
        left = inp.expires_at - workflow.now()
        if left > timedelta(0):
            await workflow.sleep(left)
        revoked = await _call(False, inp)
        return FloorResult(revoked_at=revoked.at)


@workflow.defn
class TimerFloor:
    """Only a timer (the memory floor: what the engine holds per open, waiting workflow)."""

    @workflow.run
    async def run(self, hold: Hold) -> FloorResult:
        left = hold.until - workflow.now()
        if left > timedelta(0):
            await workflow.sleep(left)
        return FloorResult()


WORKFLOWS = [LifecycleFloor, SignalGrantFloor, ExpiryFloor, TimerFloor]
