"""What a careless edit could ship: the request workflow's type with other commands.

Its own module, so the sandbox can import it without the test suite's fixtures.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from rolecall.models import AccessRequest, RequestStatus


@workflow.defn(name="AccessRequestWorkflow")
class ChangedWorkflow:
    @workflow.run
    async def run(self, req: AccessRequest) -> RequestStatus:
        await workflow.sleep(timedelta(seconds=1))
        raise AssertionError("unreachable in replay")
