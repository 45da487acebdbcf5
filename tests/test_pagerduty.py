"""On-call auto-approval through real pdpyras, pointed at a local fake PagerDuty REST API.

Real worker, real Temporal dev server, real PostgreSQL; nothing is mocked in Python. The
check's result is read back from the workflow history, where the Temporal UI shows it too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from activities.pagerduty import FAILED
from rolecall.config import load
from rolecall.errors import ConfigError
from rolecall.models import OnCallResult, RequestState
from tests.conftest import Roles, Stack, eventually, write_config
from tests.fake_pagerduty import TOKEN_ENV, FakePagerDuty

DB_POLICY = "PEPDB01"


def pagerduty(fake: FakePagerDuty, **overrides: Any) -> dict[str, dict[str, Any]]:
    return fake.section(**{"escalation_policy_ids": [DB_POLICY], **overrides})


async def oncall_result(stack: Stack, rid: str, timeout: float = 15) -> OnCallResult:
    """The check_oncall result recorded in the history, once the workflow has acted on it."""
    found: list[OnCallResult] = []

    async def recorded() -> bool:
        scheduled, result = None, None
        async for ev in stack.client.get_workflow_handle(rid).fetch_history_events():
            if ev.HasField("activity_task_scheduled_event_attributes"):
                if ev.activity_task_scheduled_event_attributes.activity_type.name == "check_oncall":
                    scheduled = ev.event_id
            elif ev.HasField("activity_task_completed_event_attributes"):
                attrs = ev.activity_task_completed_event_attributes
                if scheduled is not None and attrs.scheduled_event_id == scheduled:
                    [result] = await stack.client.data_converter.decode(attrs.result.payloads, [OnCallResult])
            elif ev.HasField("workflow_task_completed_event_attributes") and result is not None:
                found.append(result)  # the workflow has seen the result: status reflects it
                return True
        return False

    await eventually(recorded, timeout=timeout, what=f"the on-call check of {rid}")
    return found[0]


async def _notified(stack: Stack, rid: str) -> bool:
    async for ev in stack.client.get_workflow_handle(rid).fetch_history_events():
        attrs = ev.activity_task_scheduled_event_attributes
        if ev.HasField("activity_task_scheduled_event_attributes") and attrs.activity_type.name == "notify":
            return True
    return False


async def approve_by_human(stack: Stack, rid: str, login: str, role: str) -> None:
    """The human path still works: approve, granted, relinquish, gone."""
    r = await stack.cli("approve", rid, "--as", "dba@example.com")
    assert r.code == 0, r.err
    status = await stack.wait_state(rid, RequestState.GRANTED)
    assert status.decided_by == "dba@example.com" and not status.auto_approved
    assert stack.pg.is_member(login, role)
    await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
    await stack.wait_state(rid, RequestState.RELINQUISHED)
    assert not stack.pg.is_member(login, role)


async def test_on_call_is_granted_without_a_human_capped_and_revoked(
    make_stack, roles: Roles, fake_pd: FakePagerDuty
) -> None:
    role, login = roles.role(), roles.login()
    email = f"{login}@example.com"
    user = fake_pd.add_user(email.upper(), "Alice")  # PagerDuty's case differs: still the same person
    fake_pd.add_oncall(user, (DB_POLICY, "Databases"), level=1, schedule=("PSCDB01", "DB primary"))
    stack = await make_stack([role], sections=pagerduty(fake_pd, auto_approve_max="4s"))

    rid = await stack.request(login, role, "3h")
    status = await stack.wait_state(rid, RequestState.GRANTED)
    assert stack.pg.is_member(login, role)
    detail = f"{email} is on call (schedule DB primary, escalation policy Databases, level 1)"
    assert status.auto_approved and status.decided_by == "pagerduty"
    assert status.on_call_detail == detail and status.decision_reason == detail
    assert status.requested_duration == timedelta(hours=3)
    assert status.duration == timedelta(seconds=4)
    assert status.expires_at is not None and status.granted_at is not None
    assert status.expires_at - status.granted_at == timedelta(seconds=4)
    assert any("capped at 4s (asked for 3h)" in w for w in status.warnings), status.warnings
    assert (await oncall_result(stack, rid)) == OnCallResult(on_call=True, checked=True, detail=detail)

    status = await stack.wait_state(rid, RequestState.EXPIRED, timeout=30)
    assert not stack.pg.is_member(login, role)
    assert status.revoked_at is not None and status.revoked_at - status.expires_at < timedelta(seconds=10)

    # What went over the wire: the exact email, then that user's on-calls, now, for the policy.
    assert fake_pd.paths() == ["/users", "/oncalls"]
    users = fake_pd.last("/users")
    assert users.one("query") == email
    assert users.headers["Authorization"] == f"Token token={fake_pd.token}"
    oncalls = fake_pd.last("/oncalls")
    assert oncalls.query["user_ids[]"] == [user]
    assert oncalls.query["escalation_policy_ids[]"] == [DB_POLICY]
    assert "schedule_ids[]" not in oncalls.query
    assert oncalls.one("earliest") == "true"
    assert "since" not in oncalls.query and "until" not in oncalls.query  # i.e. right now
    assert oncalls.status == 200


async def test_not_on_call_waits_for_a_human(make_stack, roles: Roles, fake_pd: FakePagerDuty) -> None:
    role, login = roles.role(), roles.login()
    user = fake_pd.add_user(f"{login}@example.com")
    now = datetime.now(UTC)
    fake_pd.add_oncall(user, ("PEPWEB1", "Web"))  # on call, but not for a policy that counts
    fake_pd.add_oncall(user, (DB_POLICY, "Databases"), start=now + timedelta(hours=2))  # later
    fake_pd.add_oncall(user, (DB_POLICY, "Databases"), end=now - timedelta(hours=1))  # earlier
    stack = await make_stack([role], sections=pagerduty(fake_pd))

    rid = await stack.request(login, role, "1h")
    result = await oncall_result(stack, rid)
    assert result == OnCallResult(on_call=False, checked=True, detail="")
    status = await stack.status(rid)
    assert status.state == RequestState.PENDING
    assert not status.auto_approved and status.on_call_detail == ""
    assert not stack.pg.is_member(login, role)
    assert fake_pd.paths() == ["/users", "/oncalls"]
    await approve_by_human(stack, rid, login, role)


async def test_only_the_exact_email_counts_among_several_users(
    make_stack, roles: Roles, fake_pd: FakePagerDuty
) -> None:
    role, login = roles.role(), roles.login()
    email = f"{login}@example.com"
    fake_pd.page_limit = 2  # the exact match is on the second page of the loose search
    for lookalike in (f"m{email}", f"{email}.evil", f"{email}.au"):
        fake_pd.add_oncall(fake_pd.add_user(lookalike), (DB_POLICY, "Databases"))
    stack = await make_stack([role], sections=pagerduty(fake_pd))

    # Only lookalikes, every one of them on call: no PagerDuty user is the requester.
    rid = await stack.request(login, role, "1h")
    assert await oncall_result(stack, rid) == OnCallResult(on_call=False, checked=True, detail="")
    assert (await stack.status(rid)).state == RequestState.PENDING
    assert fake_pd.paths() == ["/users", "/users"]  # two pages searched, no on-call query
    await approve_by_human(stack, rid, login, role)

    # Now the requester exists too (last, on page 2) and is on call: that user, and only it.
    fake_pd.requests.clear()
    user = fake_pd.add_user(email, "The Real One")
    fake_pd.add_oncall(user, (DB_POLICY, "Databases"), schedule=None)
    rid = await stack.request(login, role, "30m")
    status = await stack.wait_state(rid, RequestState.GRANTED)
    assert status.on_call_detail == f"{email} is on call (escalation policy Databases, level 1)"
    assert fake_pd.last("/oncalls").query["user_ids[]"] == [user]
    await stack.cli("relinquish", rid, "--as", email)
    await stack.wait_state(rid, RequestState.RELINQUISHED)
    assert not stack.pg.is_member(login, role)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("bad token", "PagerDuty refused the API token (401 Unauthorized on GET /users)"),
        ("no token", f"environment variable {TOKEN_ENV} (the PagerDuty API token) is not set"),
        (500, "PagerDuty answered 500 Internal Server Error to GET /oncalls"),
        (429, "PagerDuty is rate-limiting rolecall (429 Too Many Requests on GET /users)"),
        ("hang", "PagerDuty did not answer within 1s"),
    ],
)
async def test_pagerduty_failure_falls_back_to_a_human(
    make_stack, roles: Roles, fake_pd: FakePagerDuty, monkeypatch: pytest.MonkeyPatch, fault, reason
) -> None:
    role, login = roles.role(), roles.login()
    fake_pd.add_oncall(fake_pd.add_user(f"{login}@example.com"), (DB_POLICY, "Databases"))
    if fault == "bad token":
        monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    elif fault == "no token":
        monkeypatch.delenv(TOKEN_ENV)
    elif fault == "hang":
        fake_pd.hang()
    elif fault == 500:
        fake_pd.fail_with(500, "/oncalls")
    else:
        fake_pd.fail_with(fault)
    stack = await make_stack([role], sections=pagerduty(fake_pd, timeout=1))

    rid = await stack.request(login, role, "1h")
    result = await oncall_result(stack, rid)
    # The requester *is* on call, yet nothing is approved on a failed check; nor denied.
    assert result == OnCallResult(on_call=False, checked=False, detail=FAILED + reason)
    status = await stack.status(rid)
    assert status.state == RequestState.PENDING and not status.auto_approved
    assert status.on_call_detail == FAILED + reason
    assert not stack.pg.is_member(login, role)
    if fault == "no token":
        assert fake_pd.requests == []
    if fault == 429:
        assert [r.status for r in fake_pd.requests] == [429, 429]  # one short retry, then give up
    await approve_by_human(stack, rid, login, role)


async def test_disabled_makes_no_call_at_all(make_stack, roles: Roles, fake_pd: FakePagerDuty) -> None:
    role, login = roles.role(), roles.login()
    fake_pd.add_oncall(fake_pd.add_user(f"{login}@example.com"), (DB_POLICY, "Databases"))
    stack = await make_stack([role], sections=pagerduty(fake_pd, enabled=False))

    rid = await stack.request(login, role, "1h")
    status = await stack.wait_state(rid, RequestState.PENDING)
    await eventually(lambda: _notified(stack, rid), 15, "the approvers to be asked")
    assert status.on_call_detail == ""
    # Disabled: the on-call activity is not even scheduled, and PagerDuty hears nothing.
    scheduled = [
        ev.activity_task_scheduled_event_attributes.activity_type.name
        async for ev in stack.client.get_workflow_handle(rid).fetch_history_events()
        if ev.HasField("activity_task_scheduled_event_attributes")
    ]
    assert "check_oncall" not in scheduled and "notify" in scheduled
    assert fake_pd.requests == []
    await stack.cli("cancel", rid, "--as", f"{login}@example.com")
    await stack.wait_state(rid, RequestState.CANCELLED)


@pytest.mark.parametrize("max_level", [1, 2])
async def test_escalation_level_two_counts_only_when_configured(
    make_stack, roles: Roles, fake_pd: FakePagerDuty, max_level: int
) -> None:
    role, login = roles.role(), roles.login()
    email = f"{login}@example.com"
    fake_pd.add_oncall(fake_pd.add_user(email), (DB_POLICY, "Databases"), level=2)
    stack = await make_stack([role], sections=pagerduty(fake_pd, max_escalation_level=max_level))

    rid = await stack.request(login, role, "1h")
    result = await oncall_result(stack, rid)
    if max_level == 1:
        assert result == OnCallResult(on_call=False, checked=True, detail="")
        assert (await stack.status(rid)).state == RequestState.PENDING
        await approve_by_human(stack, rid, login, role)
    else:
        detail = f"{email} is on call (schedule DB primary, escalation policy Databases, level 2)"
        assert result == OnCallResult(on_call=True, checked=True, detail=detail)
        status = await stack.wait_state(rid, RequestState.GRANTED)
        assert status.auto_approved and stack.pg.is_member(login, role)
        assert status.duration == timedelta(hours=1)  # within the default cap: unchanged
        await stack.cli("relinquish", rid, "--as", email)
        await stack.wait_state(rid, RequestState.RELINQUISHED)
        assert not stack.pg.is_member(login, role)


async def test_instance_duties_replace_the_org_default(
    make_stack, roles: Roles, fake_pd: FakePagerDuty
) -> None:
    role, login = roles.role(), roles.login()
    user = fake_pd.add_user(f"{login}@example.com")
    fake_pd.add_oncall(user, (DB_POLICY, "Databases"))  # counts for the org, not for this instance
    stack = await make_stack(
        [role],
        sections=pagerduty(fake_pd),
        pagerduty_schedule_ids=["PSCPAY1"],
        pagerduty_escalation_policy_ids=["PEPPAY1"],
    )
    rid = await stack.request(login, role, "1h")
    assert await oncall_result(stack, rid) == OnCallResult(on_call=False, checked=True, detail="")
    sent = fake_pd.last("/oncalls").query
    assert sent["schedule_ids[]"] == ["PSCPAY1"] and sent["escalation_policy_ids[]"] == ["PEPPAY1"]
    assert (await stack.status(rid)).state == RequestState.PENDING
    await stack.cli("cancel", rid, "--as", f"{login}@example.com")
    await stack.wait_state(rid, RequestState.CANCELLED)


@pytest.mark.parametrize(
    ("where", "body", "message"),
    [
        ("pagerduty", {"schedule_ids": ["PSC 01"]}, "pagerduty.schedule_ids: 'PSC 01' is not a PagerDuty ID"),
        (
            "pagerduty",
            {"url": "api.pagerduty.com"},
            "pagerduty.url: 'api.pagerduty.com' is not an http(s) URL",
        ),
        (
            "instance",
            {"pagerduty_escalation_policy_ids": ["PEP-1"]},
            "instances.pg.pagerduty_escalation_policy_ids: 'PEP-1' is not a PagerDuty ID",
        ),
    ],
)
def test_config_refuses_bad_pagerduty_settings(tmp_path: Path, where, body, message) -> None:
    if where == "pagerduty":
        path = write_config(tmp_path / "c.toml", ["r"], ["dba@example.com"], {"pagerduty": body})
    else:
        path = write_config(tmp_path / "c.toml", ["r"], ["dba@example.com"], **body)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert message in str(e.value)


ANY_DUTY = (
    "both empty would count any on-call duty in the whole PagerDuty account; list the schedules "
    "or escalation policies, or set {key} to mean it"
)


@pytest.mark.parametrize(
    ("pagerduty_body", "instance", "message"),
    [
        (
            {"enabled": True},
            {},
            "pagerduty: enabled = true with schedule_ids and escalation_policy_ids "
            + ANY_DUTY.format(key="any_duty = true"),
        ),
        (
            {"enabled": True, "schedule_ids": [], "escalation_policy_ids": [], "any_duty": False},
            {"pagerduty_schedule_ids": ["PSCDB01"]},  # one instance naming its own does not help
            "pagerduty: enabled = true with schedule_ids and escalation_policy_ids "
            + ANY_DUTY.format(key="any_duty = true"),
        ),
        (
            {"enabled": True, "escalation_policy_ids": [DB_POLICY]},
            {"pagerduty_schedule_ids": [], "pagerduty_escalation_policy_ids": []},
            "instances.pg: pagerduty_schedule_ids and pagerduty_escalation_policy_ids "
            + ANY_DUTY.format(key="[pagerduty] any_duty = true"),
        ),
        (
            # One key given replaces the pair: the other is empty too.
            {"enabled": True, "escalation_policy_ids": [DB_POLICY]},
            {"pagerduty_schedule_ids": []},
            "instances.pg: pagerduty_schedule_ids and pagerduty_escalation_policy_ids "
            + ANY_DUTY.format(key="[pagerduty] any_duty = true"),
        ),
        (
            {"enabled": True, "any_duty": True, "schedule_ids": ["PSCDB01"]},
            {},
            "pagerduty: any_duty = true counts every on-call duty, but schedule_ids or "
            "escalation_policy_ids narrow it: remove any_duty, or empty both lists",
        ),
    ],
)
def test_config_refuses_counting_any_duty_by_accident(
    tmp_path: Path, pagerduty_body: dict[str, Any], instance: dict[str, Any], message: str
) -> None:
    path = write_config(
        tmp_path / "rolecall.toml", ["r"], ["dba@example.com"], {"pagerduty": pagerduty_body}, **instance
    )
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("pagerduty_body", "instance", "counted"),
    [
        ({"enabled": False}, {}, ([], [])),  # off: nothing counts, nothing to refuse
        ({"enabled": True, "any_duty": True}, {}, ([], [])),
        (
            {"enabled": True, "any_duty": True},
            {"pagerduty_escalation_policy_ids": [DB_POLICY]},  # an instance may still narrow it
            ([], [DB_POLICY]),
        ),
        (
            {"enabled": True, "escalation_policy_ids": [DB_POLICY], "any_duty": False},
            {"pagerduty_schedule_ids": ["PSCPAY1"]},
            (["PSCPAY1"], []),
        ),
    ],
)
def test_config_accepts_named_duties_or_an_explicit_any_duty(
    tmp_path: Path,
    pagerduty_body: dict[str, Any],
    instance: dict[str, Any],
    counted: tuple[list[str], list[str]],
) -> None:
    path = write_config(
        tmp_path / "rolecall.toml", ["r"], ["dba@example.com"], {"pagerduty": pagerduty_body}, **instance
    )
    config = load(path)
    assert config.instance("pg").pagerduty_duties(config.pagerduty) == counted


async def test_any_duty_counts_every_duty_in_the_account(
    make_stack, roles: Roles, fake_pd: FakePagerDuty
) -> None:
    """any_duty = true: on call for an unrelated team still auto-approves, as it says."""
    role, login = roles.role(), roles.login()
    email = f"{login}@example.com"
    user = fake_pd.add_user(email, "Alice")
    fake_pd.add_oncall(user, ("PEPWEB1", "Web"), schedule=None)  # no database policy anywhere
    stack = await make_stack([role], sections=fake_pd.section(any_duty=True))

    rid = await stack.request(login, role, "30m")
    status = await stack.wait_state(rid, RequestState.GRANTED)
    detail = f"{email} is on call (escalation policy Web, level 1)"
    assert status.auto_approved and status.decided_by == "pagerduty" and status.on_call_detail == detail
    assert stack.pg.is_member(login, role)
    # PagerDuty was asked about every duty of that user, with no schedule or policy filter.
    sent = fake_pd.last("/oncalls").query
    assert sent["user_ids[]"] == [user]
    assert "schedule_ids[]" not in sent and "escalation_policy_ids[]" not in sent
    await stack.cli("relinquish", rid, "--as", email)
    await stack.wait_state(rid, RequestState.RELINQUISHED)
    assert not stack.pg.is_member(login, role)
