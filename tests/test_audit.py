"""`rolecall audit`: real requests in every kind of end state, exported as CSV and JSON lines.

The auditor's questions: who asked, for what and why; who approved (or why it was
auto-approved); when access was granted and taken back; which signals were refused.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from rolecall.audit import COLUMNS, parse_window
from rolecall.errors import BadRequest
from rolecall.models import Decision, RequestState
from rolecall.operations import handle
from rolecall.temporal import AUTO_APPROVED
from tests.conftest import Roles, eventually
from tests.fake_pagerduty import FakePagerDuty


async def test_audit_export(make_stack, roles: Roles, pg, fake_pd: FakePagerDuty) -> None:
    role = roles.role()
    names = ["expired", "denied", "cancelled", "relinq", "oncall", "running", "killed"]
    login = {n: roles.login(n) for n in names}
    email = {n: f"{login[n]}@example.com" for n in names}
    fake_pd.add_oncall(fake_pd.add_user(email["oncall"]))
    stack = await make_stack(
        [role],
        sections=fake_pd.section(escalation_policy_ids=["PEPDB01"]),
    )
    since = (datetime.now(UTC) - timedelta(seconds=2)).isoformat()
    dba = "dba@example.com"

    rid = {
        n: await stack.request(login[n], role, "2s" if n == "expired" else "1h", f"why {n}") for n in names
    }
    await stack.cli("approve", rid["expired"], "--as", dba, "--reason", "ticket 42")
    await stack.cli("deny", rid["denied"], "--as", dba, "--reason", "not today")
    await stack.cli("cancel", rid["cancelled"], "--as", email["cancelled"])
    # refused: the requester approving their own request, sent past the CLI's pre-check
    await handle(stack.client, rid["relinq"]).signal("approve", Decision(actor=email["relinq"]))
    await stack.cli("approve", rid["relinq"], "--as", dba)
    await stack.wait_state(rid["relinq"], RequestState.GRANTED)
    await stack.cli("relinquish", rid["relinq"], "--as", email["relinq"])
    await stack.cli("approve", rid["running"], "--as", dba)
    await stack.wait_state(rid["running"], RequestState.GRANTED)
    await handle(stack.client, rid["killed"]).signal("approve", Decision(actor="mallory@example.com"))
    await handle(stack.client, rid["killed"]).terminate("operator stopped it")
    await stack.wait_state(rid["oncall"], RequestState.GRANTED)
    await stack.cli("relinquish", rid["oncall"], "--as", email["oncall"])
    for n, state in [
        ("expired", RequestState.EXPIRED),
        ("denied", RequestState.DENIED),
        ("cancelled", RequestState.CANCELLED),
        ("relinq", RequestState.RELINQUISHED),
        ("oncall", RequestState.RELINQUISHED),
    ]:
        await stack.wait_state(rid[n], state)

    # The auto-approval is a search attribute: the UI's saved query finds exactly that one.
    query = f'{AUTO_APPROVED.name} = true AND RolecallRole = "{role}"'

    async def found_auto() -> bool:
        return [wf.id async for wf in stack.client.list_workflows(query)] == [rid["oncall"]]

    await eventually(found_auto, timeout=10, what="RolecallAutoApproved = true")
    humans = f'{AUTO_APPROVED.name} = false AND RolecallRole = "{role}"'
    assert {wf.id async for wf in stack.client.list_workflows(humans)} == {
        rid[n] for n in ("expired", "denied", "cancelled", "relinq", "running")
    }

    ours = set(rid.values())

    async def export(fmt: str) -> str:
        r = await stack.cli("audit", "--since", since, "--format", fmt)
        assert r.code == 0, r.err
        return r.out

    async def complete() -> bool:
        lines = (await export("jsonl")).splitlines()
        return {json.loads(line)["id"] for line in lines} >= ours

    await eventually(complete, timeout=10, what="every request in visibility")
    rows = {r["id"]: r for r in map(json.loads, (await export("jsonl")).splitlines()) if r["id"] in ours}
    assert list(rows[rid["expired"]]) == COLUMNS
    row = {n: rows[rid[n]] for n in names}
    for n in names:
        assert row[n]["requester"] == email[n] and row[n]["role"] == role and row[n]["instance"] == "pg"
        assert row[n]["reason"] == f"why {n}"
    assert row["expired"]["state"] == "expired" and row["expired"]["decision"] == "approved"
    assert row["expired"]["decided_by"] == dba and row["expired"]["decision_reason"] == "ticket 42"
    assert row["expired"]["db_user"] == login["expired"]
    granted, expires, revoked = (
        datetime.fromisoformat(row["expired"][k]) for k in ("granted_at", "expires_at", "revoked_at")
    )
    assert expires - granted == timedelta(seconds=2) and revoked >= expires
    assert row["denied"]["decision"] == "denied" and row["denied"]["decision_reason"] == "not today"
    assert row["denied"]["granted_at"] == "" and row["denied"]["revoked_at"] == ""
    assert row["cancelled"]["state"] == "cancelled" and row["cancelled"]["decided_by"] == email["cancelled"]
    [refused] = row["relinq"]["refused"]
    assert refused["signal"] == "approve" and refused["actor"] == email["relinq"] and refused["why"]
    assert row["relinq"]["state"] == "relinquished" and row["relinq"]["revoked_at"]
    assert row["oncall"]["auto_approved"] is True and row["oncall"]["decision"] == "auto-approved"
    assert row["oncall"]["decided_by"] == "pagerduty" and "on call" in row["oncall"]["decision_reason"]
    assert row["running"]["state"] == "granted" and row["running"]["workflow_status"] == "running"
    assert row["running"]["revoked_at"] == "" and row["running"]["expires_at"]
    # terminated by an operator: no result, no query; the history still tells the story
    assert row["killed"]["workflow_status"] == "terminated" and "history" in row["killed"]["note"]
    assert row["killed"]["requester"] == email["killed"]
    assert row["killed"]["refused"] == [] and row["killed"]["state"] == "pending"
    assert "signals received: approve by mallory@example.com at " in row["killed"]["note"]

    text = await export("csv")
    assert text.splitlines()[0] == ",".join(COLUMNS)
    by_id = {r["id"]: r for r in csv.DictReader(io.StringIO(text))}
    assert by_id[rid["oncall"]]["auto_approved"] == "true"
    assert by_id[rid["denied"]]["decision_reason"] == "not today"
    assert by_id[rid["relinq"]]["refused"].startswith(f"approve by {email['relinq']} at ")

    # a window that ends before these requests holds none of them
    r = await stack.cli("audit", "--since", "2020-01-01", "--until", "2020-01-02", "--format", "jsonl")
    assert r.code == 0 and r.out == ""
    await stack.cli("relinquish", rid["running"], "--as", email["running"])
    await stack.wait_state(rid["running"], RequestState.RELINQUISHED)


def test_window_parsing() -> None:
    since, until = parse_window("2026-01-01", "2026-01-02T12:00:00+02:00")
    assert since == datetime(2026, 1, 1, tzinfo=UTC)
    assert until == datetime(2026, 1, 2, 10, tzinfo=UTC)
    assert parse_window("2026-01-01T00:00:00")[0] == since  # no zone: UTC
    with pytest.raises(BadRequest, match="not a date"):
        parse_window("last week")
    with pytest.raises(BadRequest, match="must be after"):
        parse_window("2026-01-02", "2026-01-01")


async def test_audit_bad_window_is_one_line(make_stack, roles: Roles) -> None:
    stack = await make_stack([roles.role()], worker=False)
    r = await stack.cli("audit", "--since", "yesterday")
    assert r.code == 2 and r.err.strip().splitlines() == [
        "rolecall: error: --since: 'yesterday' is not a date (2026-01-01) or ISO time"
    ]
