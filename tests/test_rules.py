"""Access rules per role: which rule applies, N of M approvals, on-call and "always" per rule,
reasons, break-glass with its review and escalation. Real dev server, real PostgreSQL."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from rolecall.config import load
from rolecall.errors import ConfigError
from rolecall.models import AccessRequest, RequestState
from rolecall.operations import handle, submit
from tests.conftest import Roles, eventually
from tests.test_durability import _notified_events

BASE = """
[instances.prod]
dsn_env = "X"
roles = ["analytics_*", "support_rw", "billing_admin"]
approvers = ["dba@example.com"]
max_duration = "8h"
"""


def _load(tmp_path: Path, text: str):
    path = tmp_path / "rolecall.toml"
    path.write_text(text)
    return load(path), path


def _rules(*tables: str) -> str:
    return BASE + "".join(f"\n[[instances.prod.rules]]\n{t}\n" for t in tables)


def test_first_matching_rule_wins_over_the_instance_defaults(tmp_path) -> None:
    config, _ = _load(
        tmp_path,
        _rules(
            'name = "read-only"\nroles = ["analytics_*"]\nauto_approve = "always"\nmax_duration = "4h"',
            'name = "billing"\nroles = ["billing_admin", "analytics_x"]\n'
            'approvers = ["a@example.com", "b@example.com", "c@example.com"]\napprovals_required = 2',
        ),
    )
    inst, pd = config.instances["prod"], config.pagerduty
    ro = inst.rule_for("analytics_x", pd)
    assert (ro.name, ro.auto_approve, ro.max_duration, ro.approvers) == (
        "read-only", "always", timedelta(hours=4), ["dba@example.com"]
    )  # fmt: skip
    billing = inst.rule_for("billing_admin", pd)
    assert (billing.name, billing.approvals_required, billing.max_duration) == (
        "billing",
        2,
        timedelta(hours=8),
    )
    default = inst.rule_for("support_rw", pd)
    assert (default.name, default.approvals_required, default.auto_approve) == ("default", 1, "never")


def test_an_instance_without_rules_behaves_as_before(tmp_path) -> None:
    config, _ = _load(tmp_path, BASE)
    rule = config.instances["prod"].rule_for("support_rw", config.pagerduty)
    assert rule.name == "default" and rule.approvals_required == 1 and rule.approvers == ["dba@example.com"]
    assert rule.auto_approve == "never"  # PagerDuty off, as before


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            'name = "x"\nroles = ["support_rw"]\napprovals = 2',
            "instances.prod.rules[0] (x).approvals: Extra inputs are not permitted",
        ),
        (
            'name = "x"\nroles = ["support_rw"]\nreason_pattern = "(INC"',
            "instances.prod.rules[0] (x).reason_pattern: '(INC' is not a valid regular expression",
        ),
        (
            'name = "x"\nroles = ["support_rw"]\napprovals_required = 2',
            "instances.prod: rules[0] (x).approvals_required: 2 distinct approvals, but only 1 "
            "approver(s) can give one (the requester never counts)",
        ),
        (
            'name = "x"\nroles = ["support_rw"]\nbreak_glass = true',
            "instances.prod: rules[0] (x).break_glass_max: break_glass = true needs a break_glass_max",
        ),
    ],
)
def test_bad_rules_are_config_errors_naming_file_rule_and_key(tmp_path, rule: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, _rules(rule))
    assert str(e.value).startswith(f"{tmp_path / 'rolecall.toml'}: ")
    assert message in str(e.value)


def test_a_rule_that_can_never_match_is_a_warning(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="rolecall.config"):
        _load(
            tmp_path,
            _rules(
                'name = "all"\nroles = ["analytics_*"]',
                'name = "shadowed"\nroles = ["analytics_ro"]',
                'name = "stray"\nroles = ["nothing_*"]',
            ),
        )
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "rules[1] (shadowed): never applies, earlier rules take all of its roles" in m for m in messages
    )
    assert any("rules[2] (stray): none of its roles (nothing_*) is requestable" in m for m in messages)


def _billing(role: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "billing",
            "roles": [role],
            "approvers": ["dba@example.com", "dba2@example.com", "lead@example.com"],
            "approvals_required": 2,
            "require_reason": True,
            "reason_pattern": "^(INC|CHG)-[0-9]+",
            "max_duration": "1h",
            "break_glass": True,
            "break_glass_max": "30m",
            "review_within": "12h",
        }
    ]


async def test_two_of_three_approvals(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role("billing"), roles.login()
    stack = await make_stack([role], rules=_billing(role))
    rid = await stack.request(login, role, "1h", "INC-42 refund")
    r = await stack.cli("approve", rid, "--as", "dba@example.com")
    assert r.code == 0, r.err
    await eventually(lambda: _approvals(stack, rid, 1), 10, "the first approval")
    status = await stack.status(rid)
    assert status.state == RequestState.PENDING
    assert [a.by for a in status.approvals] == ["dba@example.com"]
    assert status.rule == "billing" and status.approvals_required == 2
    assert not pg.is_member(login, role)
    assert "approval_progress" in await _notified_events(stack.client, rid), "the card shows 1 of 2"
    r = await stack.cli("approve", rid, "--as", "dba@example.com")
    assert r.code == 2 and "you already approved (1 of 2)" in r.err
    r = await stack.cli("approve", rid, "--as", f"{login}@example.com")
    assert r.code == 2
    r = await stack.cli("approve", rid, "--as", "lead@example.com")
    assert r.code == 0, r.err
    status = await stack.wait_state(rid, RequestState.GRANTED)
    assert [a.by for a in status.approvals] == ["dba@example.com", "lead@example.com"]
    assert pg.is_member(login, role)
    r = await stack.cli("status", rid, "--json")
    assert '"rule": "billing"' in r.out and '"approvals_required": 2' in r.out


async def test_a_deny_after_one_approval_ends_it(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role("billing"), roles.login()
    stack = await make_stack([role], rules=_billing(role))
    rid = await stack.request(login, role, "1h", "CHG-7")
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await eventually(lambda: _approvals(stack, rid, 1), 10, "the first approval")
    r = await stack.cli("deny", rid, "--as", "dba2@example.com", "--reason", "not now")
    assert r.code == 0, r.err
    status = await stack.wait_state(rid, RequestState.DENIED)
    assert status.decided_by == "dba2@example.com"
    assert not pg.is_member(login, role)


async def test_reason_rules_refused_before_anything_starts(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role("billing"), roles.login()
    stack = await make_stack([role], rules=_billing(role))
    args = (
        "request",
        "--instance",
        "pg",
        "--role",
        role,
        "--duration",
        "30m",
        "--as",
        f"{login}@example.com",
    )
    r = await stack.cli(*args)
    assert r.code == 2
    assert r.err.strip() == "rolecall: error: rule 'billing' needs a reason matching ^(INC|CHG)-[0-9]+"
    r = await stack.cli(*args, "--reason", "because")
    assert r.code == 2
    assert r.err.strip() == (
        "rolecall: error: reason 'because' does not match what rule 'billing' expects: ^(INC|CHG)-[0-9]+"
    )
    assert [wf async for wf in stack.client.list_workflows(f'TaskQueue = "{stack.task_queue}"')] == []


async def test_on_call_auto_approval_is_per_rule_and_level(make_stack, roles: Roles, pg, fake_pd) -> None:
    ro, rw, login = roles.role("analytics_ro"), roles.role("rw"), roles.login()
    user = fake_pd.add_user(f"{login}@example.com")
    fake_pd.add_oncall(user, level=2)
    rules = [
        {"name": "read-only", "roles": [ro], "auto_approve": "on_call", "on_call_max_escalation_level": 2}
    ]
    pd = fake_pd.section()
    pd["pagerduty"]["max_escalation_level"] = 1
    stack = await make_stack([ro, rw], rules=rules, sections=pd, auto_approve="never")
    rid = await stack.request(login, ro)
    status = await stack.wait_state(rid, RequestState.GRANTED)
    assert status.auto_approved and status.rule == "read-only"
    rid2 = await stack.request(login, rw)
    await eventually(lambda: _has(stack, rid2, "requested"), 10, "the approvers to be asked")
    status2 = await stack.status(rid2)
    assert status2.state == RequestState.PENDING and not status2.auto_approved
    assert not pg.is_member(login, rw)


async def test_always_rule_approves_harmless_roles_capped(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role("analytics_ro"), roles.login()
    rules = [{"name": "harmless", "roles": [role], "auto_approve": "always", "auto_approve_max": "30m"}]
    stack = await make_stack([role], rules=rules)
    rid = await stack.request(login, role, "2h")
    status = await stack.wait_state(rid, RequestState.GRANTED)
    assert status.auto_approved and status.duration == timedelta(minutes=30)
    assert status.decided_by == "rule" and "rule harmless approves" in status.on_call_detail


async def test_break_glass_granted_at_once_reviewed_and_escalated(temporal, make_stack, roles: Roles, pg):
    role, login = roles.role("billing"), roles.login()
    stack = await make_stack([role], rules=_billing(role))
    args = ("request", "--instance", "pg", "--role", role, "--duration", "1h", "--as", f"{login}@example.com")
    r = await stack.cli(*args, "--break-glass", "--reason", "INC-9 outage")
    assert r.code == 0, r.err
    rid = r.last_line
    status = await stack.wait_state(rid, RequestState.GRANTED)
    assert status.break_glass and status.decided_via == "break-glass"
    assert status.duration == timedelta(minutes=30), "capped at break_glass_max"
    assert pg.is_member(login, role)
    assert "break_glass" in await _notified_events(stack.client, rid)
    r = await stack.cli("review", rid, "--as", f"{login}@example.com")
    assert r.code == 2 and "can't review your own break-glass access" in r.err

    # Nobody reviews it for 12 hours: the alert escalates (time skipping), the grant has expired.
    h = temporal.client.get_workflow_handle(rid)
    await temporal.fast_forward(h, timedelta(hours=12, minutes=1))
    await eventually(lambda: _has(stack, rid, "review_overdue"), 30, "the review escalation")
    status = await stack.status(rid)
    assert status.state == RequestState.EXPIRED and status.review_escalated_at is not None
    assert not pg.is_member(login, role)
    r = await stack.cli("review", rid, "--as", "dba@example.com", "--note", "ok, outage INC-9")
    assert r.code == 0, r.err
    final = await handle(stack.client, rid).result()
    assert final.reviewed_by == "dba@example.com" and final.review_note == "ok, outage INC-9"


async def _has(stack, rid: str, event: str) -> bool:
    return event in await _notified_events(stack.client, rid)


async def test_break_glass_refused_where_the_rule_does_not_allow_it(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    r = await stack.cli(
        "request", "--instance", "pg", "--role", role, "--duration", "30m", "--reason", "x",
        "--as", f"{login}@example.com", "--break-glass",
    )  # fmt: skip
    assert r.code == 2
    assert r.err.strip() == "rolecall: error: rule 'default' does not allow break-glass (emergency) access"
    # And straight to Temporal: the check refuses it too.
    with pytest.raises(Exception, match="does not allow break-glass"):
        await submit(
            stack.client,
            AccessRequest(
                requester=f"{login}@example.com", instance="pg", role=role,
                duration=timedelta(minutes=30), reason="x", break_glass=True,
            ),
            stack.task_queue,
        )  # fmt: skip
    assert not pg.is_member(login, role)


async def _approvals(stack, rid: str, n: int) -> bool:
    return len((await stack.status(rid)).approvals) >= n
