"""What a request shows in Temporal's visibility, and what it sends to get there.

The server validates every attribute of an upsert against its metadata, so a request sends
only the attributes whose value changed; what the UI and the ledger read must not suffer.
"""

from __future__ import annotations

from temporalio.api.enums.v1 import EventType

from rolecall.models import RequestState
from rolecall.operations import handle
from rolecall.temporal import (
    APPROVERS,
    AUTO_APPROVED,
    BREAK_GLASS,
    EXPIRES_AT,
    INSTANCE,
    LOGIN,
    REQUESTER,
    ROLE,
    RULE,
    STATE,
)
from tests.conftest import Roles


async def test_upserts_carry_only_what_changed(make_stack, roles: Roles) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role, "1h")
    await stack.cli("approve", rid, "--as", "dba@example.com")
    granted = await stack.wait_state(rid, RequestState.GRANTED)
    live = (await handle(stack.client, rid).describe()).typed_search_attributes
    assert live.get(STATE) == "granted" and live.get(EXPIRES_AT) == granted.expires_at
    assert live.get(LOGIN) == login

    await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
    await stack.wait_state(rid, RequestState.RELINQUISHED)
    sa = (await handle(stack.client, rid).describe()).typed_search_attributes
    assert {p.key.name: p.value for p in sa if p.key.name.startswith("Rolecall")} == {
        STATE.name: "relinquished",
        REQUESTER.name: f"{login}@example.com",
        INSTANCE.name: "pg",
        ROLE.name: role,
        AUTO_APPROVED.name: False,
        LOGIN.name: login,
        RULE.name: "default",
        BREAK_GLASS.name: False,
        APPROVERS.name: ["dba@example.com"],
    }  # RolecallExpiresAt is unset once nothing is held

    sent: dict[str, bytes] = {}
    upserts = []
    async for e in handle(stack.client, rid).fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            fields = e.workflow_execution_started_event_attributes.search_attributes.indexed_fields
            sent.update({k: v.SerializeToString(deterministic=True) for k, v in fields.items()})
        elif e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            upserts.append(sorted(fields))
            for name, payload in fields.items():
                raw = payload.SerializeToString(deterministic=True)
                assert sent.get(name) != raw, f"{name} sent again unchanged in upsert {len(upserts)}"
                sent[name] = raw
    # The patches are folded into one marker (workflows/patches.py), so one change-version upsert.
    assert [u for u in upserts if "TemporalChangeVersion" in u] == [["TemporalChangeVersion"]]
    ours = [u for u in upserts if "TemporalChangeVersion" not in u]
    assert len(ours) >= 4 and sum(len(u) for u in ours) < 3 * len(ours)
