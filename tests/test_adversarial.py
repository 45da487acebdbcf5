"""The adversarial-input suite: hostile names, durations, Slack payloads, decision orders and
roles that must never be lent. Each case gets a clear error and changes nothing.

Every case is a parametrized test with a readable id; docs/security.md lists them, with the
cases other test files already cover. Run `pytest tests/test_adversarial.py -v` to see them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from psycopg import sql
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from rolecall import slack_blocks as kit
from rolecall.errors import BadRequest, NotFound
from rolecall.models import AccessRequest, Decision, RequestState
from rolecall.operations import handle, submit
from rolecall.temporal import request_id
from tests.conftest import Roles, Stack, eventually
from tests.fake_slack import ALICE, APPROVERS_CHANNEL, BOB, DBA, World, world_context
from tests.faults.support import activities_scheduled
from workflows.access_request import AccessRequestWorkflow

DBA_EMAIL = "dba@example.com"


def _email(login: str) -> str:
    return f"{login}@example.com"


async def _no_workflow(stack: Stack, rid: str) -> None:
    with pytest.raises(NotFound):
        await stack.status(rid)


async def _rejected_without_grant(stack: Stack, rid: str) -> None:
    """The request was checked and refused: it never reached a grant activity."""
    status = await stack.wait_state(rid, RequestState.REJECTED, timeout=10)
    assert status.granted_at is None
    scheduled = await activities_scheduled(stack.client, rid)
    assert "prepare_grant" not in scheduled and "grant_role" not in scheduled, scheduled


# ---- names ------------------------------------------------------------------------------

LONG = "x" * 70


@pytest.mark.parametrize(
    "role_suffix",
    [pytest.param(LONG, id="ascii-70-chars"), pytest.param("é" * 40, id="unicode-80-bytes")],
)
async def test_role_name_over_63_bytes_without_a_twin_is_refused(
    make_stack, roles: Roles, pg, role_suffix: str
) -> None:
    """PostgreSQL truncates identifiers to 63 bytes; a longer name is refused, nothing granted."""
    login = roles.login()
    asked = roles.name(role_suffix)
    stack = await make_stack([roles.prefix + "_*"])
    r = await stack.cli(
        "request", "--instance", "pg", "--role", asked, "--duration", "1h", "--as", _email(login)
    )
    assert r.code == 2
    assert f"role {asked!r} is longer than PostgreSQL's 63-byte limit for names" in r.err
    await _rejected_without_grant(stack, request_id("pg", asked, _email(login)))


async def test_role_name_of_exactly_63_bytes_is_lent_and_taken_back(make_stack, roles: Roles, pg) -> None:
    role = roles.create(roles.name("y" * (63 - len(roles.prefix) - 1)))
    assert len(role.encode()) == 63
    login = roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role)
    await stack.cli("approve", rid, "--as", DBA_EMAIL)
    await stack.wait_state(rid, RequestState.GRANTED)
    assert pg.is_member(login, role)
    await stack.cli("relinquish", rid, "--as", _email(login))
    await stack.wait_state(rid, RequestState.RELINQUISHED)
    assert not pg.is_member(login, role)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param('pg"; DROP ROLE x; --', id="quote-semicolon"),
        pytest.param("pg prod", id="space"),
        pytest.param("pg;prod", id="semicolon"),
        pytest.param("pgé", id="unicode"),
        pytest.param("p" * 64, id="64-chars"),
    ],
)
async def test_hostile_instance_name_in_config_refused(make_stack, roles: Roles, name: str) -> None:
    stack = await make_stack([roles.role()], worker=False)
    body = stack.config_path.read_text().replace("[instances.pg]", f"[instances.{json.dumps(name)}]")
    stack.config_path.write_text(body)
    r = await stack.cli("doctor")
    assert r.code == 2
    assert "must be letters, digits, _ . -" in r.err


@pytest.mark.parametrize(
    "name",
    [
        pytest.param('pg"; DROP ROLE x; --', id="quote-semicolon"),
        pytest.param("pg prod", id="space"),
        pytest.param("ü" * 40, id="unicode-80-bytes"),
    ],
)
async def test_hostile_instance_name_in_request_refused(make_stack, roles: Roles, pg, name: str) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    r = await stack.cli(
        "request", "--instance", name, "--role", role, "--duration", "1h", "--as", _email(login)
    )
    assert r.code == 2 and f"unknown instance {name!r} (configured: pg)" in r.err
    await _rejected_without_grant(stack, request_id(name, role, _email(login)))
    assert not pg.is_member(login, role)


@pytest.mark.parametrize(
    ("requested", "configured"),
    [
        pytest.param("caf\u0065\u0301", "caf\u00e9", id="nfd-vs-nfc"),
        pytest.param("ro*", "ro", id="glob-chars-in-request"),
        pytest.param(" ro", "ro", id="leading-space"),
    ],
)
async def test_lookalike_role_names_are_not_requestable(
    make_stack, roles: Roles, pg, requested: str, configured: str
) -> None:
    role = roles.create(roles.name(configured))
    login = roles.login()
    asked = roles.name(requested) if not requested.startswith(" ") else " " + role
    stack = await make_stack([role])
    r = await stack.cli(
        "request", "--instance", "pg", "--role", asked, "--duration", "1h", "--as", _email(login)
    )
    assert r.code == 2 and "is not requestable on instance 'pg'" in r.err
    await _rejected_without_grant(stack, request_id("pg", asked, _email(login)))
    assert not pg.is_member(login, role)


# ---- durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "message"),
    [
        pytest.param("1h1h", "repeats the unit", id="repeated-unit"),
        pytest.param("1.5h", "is not understood", id="decimal"),
        pytest.param("PT1H", "is not understood", id="iso8601"),
        pytest.param("1w", "is not understood", id="weeks"),
        pytest.param("", "duration is empty", id="empty"),
        pytest.param("1h -5m", "is not understood", id="embedded-negative"),
        pytest.param("0h0m0s", "is zero", id="zero-in-parts"),
        pytest.param("9" * 30 + "d", "longer than a year", id="huge-number"),
        pytest.param("367d", "longer than a year", id="a-year-and-more"),
    ],
)
async def test_malformed_durations_refused_before_anything_starts(
    make_stack, roles: Roles, duration: str, message: str
) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], worker=False)
    r = await stack.cli(
        "request", "--instance", "pg", "--role", role, f"--duration={duration}", "--as", _email(login)
    )
    assert r.code == 2 and message in r.err
    await _no_workflow(stack, request_id("pg", role, _email(login)))


@pytest.mark.parametrize(
    ("duration", "message"),
    [
        pytest.param(timedelta(0), "duration must be positive", id="zero"),
        pytest.param(timedelta(seconds=-1), "duration must be positive", id="negative"),
        pytest.param(timedelta(days=36500), "over the maximum of 8h", id="a-century"),
    ],
)
async def test_durations_sent_straight_to_temporal_are_rejected(
    make_stack, roles: Roles, pg, duration: timedelta, message: str
) -> None:
    """Bypassing the CLI and `submit`: the workflow's own check refuses them."""
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    req = AccessRequest(requester=_email(login), instance="pg", role=role, duration=duration)
    rid = request_id("pg", role, _email(login))
    if duration > timedelta(0):
        with pytest.raises(BadRequest, match=message):
            await submit(stack.client, req, stack.task_queue)
    else:
        with pytest.raises(BadRequest, match=message):  # `submit` refuses before starting
            await submit(stack.client, req, stack.task_queue)
        await _no_workflow(stack, rid)
        await stack.client.start_workflow(AccessRequestWorkflow.run, req, id=rid, task_queue=stack.task_queue)
    await _rejected_without_grant(stack, rid)
    status = await stack.status(rid)
    assert status.error is not None and message in status.error
    assert not pg.is_member(login, role)


# ---- roles that are never lent ------------------------------------------------------------

PREDEFINED = ["pg_execute_server_program", "pg_write_server_files", "pg_read_server_files"]


@pytest.mark.parametrize("predefined", PREDEFINED)
async def test_predefined_role_requestable_by_glob_is_refused(
    make_stack, roles: Roles, pg, predefined: str
) -> None:
    """`pg_*` in the config lets it through the allowlist: the backstop check refuses it."""
    login = roles.login()
    stack = await make_stack(["pg_*"])
    r = await stack.cli(
        "request", "--instance", "pg", "--role", predefined, "--duration", "1h", "--as", _email(login)
    )
    assert r.code == 2
    assert f'is or contains the predefined role "{predefined}", which is never lent' in r.err
    await _rejected_without_grant(stack, request_id("pg", predefined, _email(login)))
    assert not pg.is_member(login, predefined)


@pytest.mark.parametrize(
    ("inner", "rule"),
    [
        pytest.param("NOLOGIN SUPERUSER", "has SUPERUSER", id="superuser"),
        pytest.param("NOLOGIN CREATEROLE", "has CREATEROLE", id="createrole"),
        pytest.param("NOLOGIN BYPASSRLS", "has BYPASSRLS", id="bypassrls"),
        pytest.param("NOLOGIN REPLICATION", "has REPLICATION", id="replication"),
        pytest.param("LOGIN", "can log in", id="login"),
        pytest.param("pg_write_server_files", "predefined role", id="pg_write_server_files"),
        pytest.param("pg_read_server_files", "predefined role", id="pg_read_server_files"),
    ],
)
async def test_role_containing_a_dangerous_role_two_levels_down_is_refused(
    make_stack, roles: Roles, pg, inner: str, rule: str
) -> None:
    """outer -> middle -> dangerous: the walk up pg_auth_members finds it and names the path."""
    danger = inner if inner.startswith("pg_") else roles.create(roles.name("danger"), inner)
    middle, outer = roles.role("middle"), roles.role("outer")
    pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(danger), sql.Identifier(middle)))
    pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(middle), sql.Identifier(outer)))
    login = roles.login()
    stack = await make_stack([outer])
    r = await stack.cli(
        "request", "--instance", "pg", "--role", outer, "--duration", "1h", "--as", _email(login)
    )
    assert r.code == 2
    assert rule in r.err and f'(through "{middle}" -> "{danger}")' in r.err, r.err
    await _rejected_without_grant(stack, request_id("pg", outer, _email(login)))
    assert not pg.is_member(login, outer)


async def test_requesting_as_rolecall_own_admin_login_is_refused(make_stack, roles: Roles, pg) -> None:
    role = roles.role()
    admin = str(pg.execute("SELECT current_user")[0][0])
    stack = await make_stack([role], logins={"mallory@example.com": admin})
    r = await stack.cli(
        "request", "--instance", "pg", "--role", role, "--duration", "1h", "--as", "mallory@example.com"
    )
    assert r.code == 2 and f"'{admin}' is rolecall's own admin login" in r.err
    await _rejected_without_grant(stack, request_id("pg", role, "mallory@example.com"))


# ---- approve / deny / cancel / relinquish, in every order and twice ----------------------

SIGNALS = ("approve", "deny", "cancel", "relinquish")
FINAL = {RequestState.DENIED, RequestState.CANCELLED, RequestState.RELINQUISHED}


def expected(state: RequestState, signal: str, requester: str) -> tuple[RequestState | None, str]:
    """An independent model of the rules: (new state, or None and the refusal's words)."""
    decided = {RequestState.DENIED: "denied", RequestState.CANCELLED: "cancelled"}
    by = {RequestState.CANCELLED: requester}.get(state, DBA_EMAIL)
    if state == RequestState.PENDING:
        if signal == "relinquish":
            return None, "has not been granted yet"
        return {
            "approve": RequestState.GRANTED,
            "deny": RequestState.DENIED,
            "cancel": RequestState.CANCELLED,
        }[signal], ""
    if signal == "relinquish":
        if state == RequestState.GRANTED:
            return RequestState.RELINQUISHED, ""
        return None, f"already {state.value}"
    return None, f"already {decided.get(state, 'approved')} by {by}"


async def _play(stack: Stack, rid: str, requester: str, order: list[str], raw: bool) -> list[str]:
    """Send the order, each signal twice; check each step against the model. Returns a log."""
    state, refused, log = RequestState.PENDING, 0, []
    for signal in order:
        actor = DBA_EMAIL if signal in ("approve", "deny") else requester
        new, why = expected(state, signal, requester)
        if raw:
            try:
                await handle(stack.client, rid).signal(signal, Decision(actor=actor))
            except RPCError:
                assert state in FINAL, f"{signal} could not be sent in {state.value}"
                log.append(f"{signal}: closed")
                continue
        else:
            r = await stack.cli(signal, rid, "--as", actor)
            assert (r.code == 0) == (new is not None), (signal, state, r.err)
            if new is None:
                assert why in r.err, (signal, state, r.err)
        if new is not None:
            state = (await stack.wait_state(rid, new, timeout=15)).state
            log.append(f"{signal}: {state.value}")
            continue
        if raw and state not in FINAL:  # the workflow refuses and records it
            refused += 1
            await eventually(_refused_count(stack, rid, refused), 10, f"{signal} refused in {state.value}")
            assert why in (await stack.status(rid)).refused[-1].why
        status = await stack.status(rid)
        assert status.state == state, (signal, status.state)
        log.append(f"{signal}: refused")
    return log


def _refused_count(stack: Stack, rid: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len((await stack.status(rid)).refused) == n

    return check


@pytest.mark.parametrize(
    "order", [pytest.param(list(p), id="-".join(p)) for p in itertools.permutations(SIGNALS)]
)
async def test_decisions_in_every_order_twice(make_stack, roles: Roles, pg, order: list[str]) -> None:
    """Through the CLI (the decide update) and as raw signals (the workflow's own check), each
    signal sent twice in a row: one decision wins, the rest are refused, and the database
    holds the membership exactly while the request is granted."""
    login = roles.login()
    via_cli, via_signal = roles.role("cli"), roles.role("sig")
    stack = await make_stack([via_cli, via_signal])
    requester = _email(login)
    doubled = [s for s in order for _ in range(2)]

    async def run(role: str, raw: bool) -> list[str]:
        if raw:  # no CLI at all on this path (the CLI's stdout is process-wide)
            req = AccessRequest(requester=requester, instance="pg", role=role, duration=timedelta(hours=1))
            rid = (await submit(stack.client, req, stack.task_queue)).id
        else:
            rid = await stack.request(login, role)
        log = await _play(stack, rid, requester, doubled, raw)
        if (await stack.status(rid)).state == RequestState.GRANTED:
            # relinquish came before approve and was refused: the grant stands until relinquished.
            assert pg.is_member(login, role)
            await handle(stack.client, rid).signal("relinquish", Decision(actor=requester))
            await stack.wait_state(rid, RequestState.RELINQUISHED)
        await eventually(lambda: _closed(stack, rid), 15, f"{rid} to close")
        final = await stack.status(rid)
        assert final.state in FINAL
        assert not pg.is_member(login, role)
        return log

    logs = await asyncio.gather(run(via_cli, False), run(via_signal, True))
    first = next(s for s in order if s != "relinquish")
    for log in logs:  # the first decision sent is the one that counts
        assert log[0 if order[0] != "relinquish" else 2].startswith(f"{first}: "), log


async def _closed(stack: Stack, rid: str) -> bool:
    desc = await handle(stack.client, rid).describe()
    return desc.status == WorkflowExecutionStatus.COMPLETED


# ---- Slack: replayed requests and edited buttons ------------------------------------------


def _click_body(w: World, user: str, action_id: str, value: str, msg: dict[str, Any]) -> str:
    payload = w.slack._base("block_actions", user)
    payload["actions"] = [
        {"action_id": action_id, "block_id": "b", "type": "button", "value": value, "action_ts": "1"}
    ]
    payload["container"] = {"type": "message", "message_ts": msg["ts"], "channel_id": APPROVERS_CHANNEL}
    payload["channel"] = {"id": APPROVERS_CHANNEL, "name": "x"}
    payload["message"] = {"ts": msg["ts"], "text": "", **w.fake.message(APPROVERS_CHANNEL, msg["ts"])}
    return urlencode({"payload": json.dumps(payload)})


async def _approvers_message(w: World) -> dict[str, Any]:
    await eventually(lambda: len(w.posts(APPROVERS_CHANNEL)) >= 1, 15, "the approvers' message")
    return w.posts(APPROVERS_CHANNEL)[0]


async def _ephemeral(w: World, user: str, count: int) -> str:
    await eventually(lambda: len(w.ephemerals(user)) >= count, 10, f"ephemeral #{count} for {user}")
    return w.ephemerals(user)[count - 1]


async def test_replayed_approve_click(make_stack, roles: Roles, pg) -> None:
    """The same signed click twice inside Slack's 5-minute window: one decision; the same
    click captured and sent 301 s later: 401 and nothing happens."""
    form = "application/x-www-form-urlencoded"
    async with world_context(make_stack, roles) as w:
        rid = await w.stack.request(w.login, w.role)
        msg = await _approvers_message(w)
        body = _click_body(w, DBA, kit.APPROVE, rid, msg)
        ts = int(time.time())
        sig = w.slack.verifier.generate_signature(timestamp=str(ts), body=body)
        assert (await w.slack.post(body, form, timestamp=ts, signature=sig)).status == 200
        await w.stack.wait_state(rid, RequestState.GRANTED, timeout=15)
        assert (await w.slack.post(body, form, timestamp=ts, signature=sig)).status == 200
        assert "already approved by dba@example.com" in await _ephemeral(w, DBA, 1)
        status = await w.stack.status(rid)
        assert status.decided_by == DBA_EMAIL and status.refused == []

        old = ts - 301
        old_sig = w.slack.verifier.generate_signature(timestamp=str(old), body=body)
        assert (await w.slack.post(body, form, timestamp=old, signature=old_sig)).status == 401
        assert len(w.ephemerals(DBA)) == 1  # the stale replay reached no handler
        assert (await w.stack.status(rid)).state == RequestState.GRANTED
        assert pg.is_member(w.login, w.role)


@pytest.mark.parametrize(
    ("clicker", "action", "target", "refusal"),
    [
        pytest.param(BOB, kit.RELINQUISH, "alice", "only the requester", id="bob-relinquishes-alice"),
        pytest.param(ALICE, kit.APPROVE, "alice", "is not an approver", id="alice-approves-own"),
        pytest.param(ALICE, kit.CANCEL, "carol", "only the requester can cancel", id="alice-cancels-carol"),
        pytest.param(BOB, kit.DENY, "alice", "is not an approver", id="bob-denies-alice"),
        pytest.param(DBA, kit.APPROVE, "missing", "no request with id", id="approve-unknown-id"),
        pytest.param(DBA, kit.APPROVE, "upper", "no request with id", id="approve-id-case-changed"),
    ],
)
async def test_edited_button_payload_changes_nothing(
    make_stack, roles: Roles, pg, clicker: str, action: str, target: str, refusal: str
) -> None:
    """A button's value edited to another request, or clicked by another user: the handler
    authorises `user.id` against the request the value names, and the workflow re-checks."""
    carol = roles.login("carol")
    async with world_context(make_stack, roles) as w:
        alice_rid = await w.stack.request(w.login, w.role)
        carol_rid = await w.stack.request(carol, w.role)
        if action == kit.RELINQUISH:
            await w.stack.cli("approve", alice_rid, "--as", DBA_EMAIL)
            await w.stack.wait_state(alice_rid, RequestState.GRANTED)
        before = {rid: await w.stack.status(rid) for rid in (alice_rid, carol_rid)}
        value = {
            "alice": alice_rid,
            "carol": carol_rid,
            "missing": request_id("pg", w.role, "nobody@example.com"),
            "upper": alice_rid.upper(),
        }[target]
        msg = await _approvers_message(w)
        r = await w.slack.click(clicker, action, value, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert r.status == 200
        assert refusal in await _ephemeral(w, clicker, 1)
        for rid, was in before.items():
            now = await w.stack.status(rid)
            assert (now.state, now.decided_by, now.refused) == (was.state, was.decided_by, was.refused)
        assert pg.is_member(w.login, w.role) == (action == kit.RELINQUISH)
        assert not pg.is_member(carol, w.role)
        assert not w.fake.calls_to("views.open")  # no deny modal opened for a refused click
