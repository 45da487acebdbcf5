"""The worker may run workflow code outside temporalio's sandbox (ROLECALL_WORKFLOW_SANDBOX=false).

That is only safe while nondeterminism is still caught before it reaches production: every
other test runs the sandbox, and the replay test replays every recorded history. These tests
prove the product works without the sandbox, and that the replayer rolecall's replay test
uses fails a workflow whose commands changed, whichever runner it is given.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from rolecall.config import ConfigStore, Settings
from rolecall.models import RequestState
from rolecall.temporal import DATA_CONVERTER
from tests.changed_workflow import ChangedWorkflow
from tests.conftest import DECISION_KEY, Roles
from worker import build_worker
from workflows.access_request import AccessRequestWorkflow

HISTORY = Path(__file__).parent / "histories" / "v6-relinquished.json"


def test_the_deployed_worker_runs_without_the_sandbox_by_default() -> None:
    assert Settings().workflow_sandbox is False


async def test_request_lifecycle_without_the_sandbox(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], worker=False)
    unsandboxed = build_worker(
        stack.client,
        ConfigStore(stack.config_path),
        stack.task_queue,
        decision_key=DECISION_KEY,
        workflow_sandbox=False,
    )
    async with unsandboxed:
        rid = await stack.request(login, role, "1h")
        r = await stack.cli("approve", rid, "--as", "dba@example.com")
        assert r.code == 0, r.err
        await stack.wait_state(rid, RequestState.GRANTED)
        assert pg.is_member(login, role)
        r = await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
        assert r.code == 0, r.err
        status = await stack.wait_state(rid, RequestState.RELINQUISHED)
        assert not pg.is_member(login, role)
        assert status.revoked_at is not None


@pytest.mark.parametrize(
    "runner",
    [
        pytest.param(SandboxedWorkflowRunner(), id="sandboxed"),
        pytest.param(UnsandboxedWorkflowRunner(), id="unsandboxed"),
    ],
)
async def test_replay_fails_a_changed_workflow(runner: WorkflowRunner) -> None:
    history = WorkflowHistory.from_json("recorded", HISTORY.read_text())
    same = Replayer(workflows=[AccessRequestWorkflow], data_converter=DATA_CONVERTER, workflow_runner=runner)
    assert (await same.replay_workflow(history, raise_on_replay_failure=False)).replay_failure is None
    changed = Replayer(workflows=[ChangedWorkflow], data_converter=DATA_CONVERTER, workflow_runner=runner)
    result = await changed.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert (
        "Nondeterminism" in type(result.replay_failure).__name__
        or "nondetermin" in str(result.replay_failure).lower()
    ), result.replay_failure
