"""A request granted before the patches were folded finishes on the code that folds them."""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.worker import Replayer

from rolecall.config import ConfigStore
from rolecall.models import RequestState
from rolecall.operations import handle
from rolecall.temporal import DATA_CONVERTER
from tests.conftest import DECISION_KEY, Roles
from worker import build_worker
from workflows import patches
from workflows.access_request import AccessRequestWorkflow

ADDED_IN_V9_OR_LATER = ("held-grant-continues", "revoking-indexed-when-failing", "burst-tail-after-revokes")


def _as_v7(self: patches.Patches, patch_id: str) -> bool:
    """What v7 asked: every patch on its own, and nothing about what v8 or later added."""
    if patch_id in ("changed-search-attributes", *ADDED_IN_V9_OR_LATER):
        return False
    return workflow.patched(patch_id)


def _as_v8(self: patches.Patches, patch_id: str) -> bool:
    """What v8 asked: the patches folded into v8-folded, and nothing about what v9 or later added."""
    if patch_id in ADDED_IN_V9_OR_LATER:
        return False
    if patch_id in patches.FOLDED:
        if patches.FOLDED_INTO not in self._answers:
            self._answers[patches.FOLDED_INTO] = workflow.patched(patches.FOLDED_INTO)
        if self._answers[patches.FOLDED_INTO]:
            return True
    return workflow.patched(patch_id)


def _as_v9(self: patches.Patches, patch_id: str) -> bool:
    """What v9 asked: v9-folded first, then v8-folded, and nothing about what v10 added."""
    if patch_id in ("revoking-indexed-when-failing", "burst-tail-after-revokes"):
        return False
    folds = ((patches.FOLDED_INTO_V9, patches.FOLDED_V9), (patches.FOLDED_INTO, patches.FOLDED))
    return _folded(self, patch_id, folds)


def _as_v10(self: patches.Patches, patch_id: str) -> bool:
    """What v10 asked: v10-folded, v9-folded, v8-folded, and nothing about what v11 added."""
    if patch_id == "burst-tail-after-revokes":
        return False
    folds = (
        (patches.FOLDED_INTO_V10, patches.FOLDED_V10),
        (patches.FOLDED_INTO_V9, patches.FOLDED_V9),
        (patches.FOLDED_INTO, patches.FOLDED),
    )
    return _folded(self, patch_id, folds)


def _folded(self: patches.Patches, patch_id: str, folds: tuple[tuple[str, frozenset[str]], ...]) -> bool:
    for name, members in folds:
        if patch_id in members:
            if name not in self._answers:
                self._answers[name] = workflow.patched(name)
            if self._answers[name]:
                return True
    return workflow.patched(patch_id)


async def _patch_markers(client: Any, rid: str) -> list[str]:
    markers = []
    async for e in handle(client, rid).fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            attrs = e.marker_recorded_event_attributes
            if attrs.marker_name == "core_patch":
                markers.append(
                    DATA_CONVERTER.payload_converter.from_payload(attrs.details["patch-data"].payloads[0])
                )
    return [m["id"] for m in markers]


async def _upgraded(make_stack, roles: Roles, pg, monkeypatch, older: Any) -> tuple[list[str], list[str]]:
    """Granted on older code, relinquished on this code by a fresh worker (which replays the
    older history first): the patch markers before and after. The grant is gone and the
    whole history replays."""
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], worker=False)

    def worker(sandbox: bool) -> Any:
        return build_worker(
            stack.client, ConfigStore(stack.config_path), stack.task_queue,
            decision_key=DECISION_KEY, workflow_sandbox=sandbox,
        )  # fmt: skip

    with monkeypatch.context() as m:
        m.setattr(patches.Patches, "on", older)
        async with worker(sandbox=False):  # the sandbox would re-import the real module
            rid = await stack.request(login, role, "1h")
            await stack.cli("approve", rid, "--as", "dba@example.com")
            await stack.wait_state(rid, RequestState.GRANTED)
    assert pg.is_member(login, role)
    before = await _patch_markers(stack.client, rid)

    async with worker(sandbox=True):  # a fresh cache: this code replays the older history first
        r = await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
        assert r.code == 0, r.err
        status = await stack.wait_state(rid, RequestState.RELINQUISHED)
    assert status.revoked_at is not None and not pg.is_member(login, role)

    history = await handle(stack.client, rid).fetch_history()
    replayer = Replayer(workflows=[AccessRequestWorkflow], data_converter=DATA_CONVERTER)
    assert (await replayer.replay_workflow(history, raise_on_replay_failure=False)).replay_failure is None
    return before, await _patch_markers(stack.client, rid)


async def test_a_request_granted_by_v7_is_revoked_by_v8(make_stack, roles: Roles, pg, monkeypatch) -> None:
    before, after = await _upgraded(make_stack, roles, pg, monkeypatch, _as_v7)
    assert patches.FOLDED_INTO not in before and "ledger-search-attributes" in before
    assert patches.FOLDED_INTO not in after


async def test_a_request_granted_by_v8_is_revoked_by_v9(make_stack, roles: Roles, pg, monkeypatch) -> None:
    """A v8 grant does not continue in a fresh run under v9 (its expiry timer is already set):
    it replays as recorded and is revoked by the newer code, with no v9 marker (v10's revoke
    records its own)."""
    before, after = await _upgraded(make_stack, roles, pg, monkeypatch, _as_v8)
    assert before == [patches.FOLDED_INTO]
    assert after == [patches.FOLDED_INTO, "revoking-indexed-when-failing"]


async def test_a_request_granted_by_v9_is_revoked_by_v10(make_stack, roles: Roles, pg, monkeypatch) -> None:
    """A v9 grant relinquished under v10 takes v10's revoke, which records its own marker."""
    before, after = await _upgraded(make_stack, roles, pg, monkeypatch, _as_v9)
    assert before == [patches.FOLDED_INTO_V9]
    assert after == [patches.FOLDED_INTO_V9, "revoking-indexed-when-failing"]


async def test_a_request_granted_by_v10_is_revoked_by_v11(make_stack, roles: Roles, pg, monkeypatch) -> None:
    """A v10 grant relinquished under v11 replays as recorded and records no v11 marker: the
    burst tail is asked about only at an expiry."""
    before, after = await _upgraded(make_stack, roles, pg, monkeypatch, _as_v10)
    assert before == [patches.FOLDED_INTO_V10]
    assert after == [patches.FOLDED_INTO_V10]


async def test_a_new_request_records_one_patch_marker(make_stack, roles: Roles) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role, "1h")
    await stack.cli("deny", rid, "--as", "dba@example.com", "--reason", "not today")
    await stack.wait_state(rid, RequestState.DENIED)
    assert await _patch_markers(stack.client, rid) == [patches.FOLDED_INTO_V11]
