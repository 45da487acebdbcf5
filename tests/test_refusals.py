"""Bad input and unauthorised decisions: a clear error, exit code 2, and nothing changes."""

from __future__ import annotations

import pytest
from psycopg import sql

from rolecall.models import Decision, RequestState
from rolecall.operations import handle
from tests.conftest import Roles


async def _request(stack, *args: str):
    return await stack.cli("request", "--instance", "pg", *args)


async def test_non_approver_and_self_approval_refused(make_stack, roles: Roles, pg) -> None:
    role = roles.role()
    dba = roles.login("dba")
    stack = await make_stack([role], approvers=[f"{dba}@example.com"])
    rid = await stack.request(dba, role)  # the approver asks for access themselves

    r = await stack.cli("approve", rid, "--as", "mallory@example.com")
    assert r.code == 2
    assert "mallory@example.com is not an approver for instance 'pg'" in r.err
    r = await stack.cli("approve", rid, "--as", f"{dba}@example.com")
    assert r.code == 2
    assert "you can't approve your own request" in r.err

    # The workflow checks again: signals sent straight to Temporal are refused and recorded.
    h = handle(stack.client, rid)
    await h.signal("approve", Decision(actor="mallory@example.com"))
    await h.signal("approve", Decision(actor=f"{dba}@example.com"))
    status = await stack.status(rid)
    for _ in range(50):
        if len(status.refused) == 2:
            break
        status = await stack.status(rid)
    assert status.state == RequestState.PENDING
    assert [(r.actor, r.signal) for r in status.refused] == [
        ("mallory@example.com", "approve"),
        (f"{dba}@example.com", "approve"),
    ]
    assert "can't approve your own request" in status.refused[1].why
    assert not pg.is_member(dba, role)


async def test_self_approval_when_policy_allows(make_stack, roles: Roles, pg) -> None:
    role = roles.role()
    dba = roles.login("dba")
    stack = await make_stack([role], approvers=[f"{dba}@example.com"], allow_self_approval=True)
    rid = await stack.request(dba, role)
    r = await stack.cli("approve", rid, "--as", f"{dba}@example.com")
    assert r.code == 0, r.err
    await stack.wait_state(rid, RequestState.GRANTED)
    assert pg.is_member(dba, role)


async def test_relinquish_only_by_requester(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role)
    r = await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
    assert r.code == 2 and "has not been granted yet" in r.err
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.GRANTED)
    r = await stack.cli("relinquish", rid, "--as", "dba@example.com")
    assert r.code == 2
    assert f"only the requester ({login}@example.com) can relinquish" in r.err
    await handle(stack.client, rid).signal("relinquish", Decision(actor="dba@example.com"))
    r = await stack.cli("approve", rid, "--as", "dba@example.com")
    assert r.code == 2 and "already approved by dba@example.com" in r.err
    status = await stack.status(rid)
    assert status.state == RequestState.GRANTED
    assert pg.is_member(login, role)


async def test_status_of_a_closed_request_is_its_result_or_how_it_ended(make_stack, roles: Roles) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    rid = await stack.request(login, role)
    r = await stack.cli("status", rid)
    assert r.code == 0 and "pending" in r.out
    await stack.cli("deny", rid, "--as", "dba@example.com")
    await handle(stack.client, rid).result()
    r = await stack.cli("status", rid)  # closed: its result, not a query replayed by a worker
    assert r.code == 0 and "denied" in r.out
    rid = await stack.request(login, role)
    await handle(stack.client, rid).terminate("operator stopped it")
    r = await stack.cli("status", rid)
    assert r.code != 0 and f"request {rid} ended abnormally: TERMINATED" in r.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "{role}", "--duration", "9h"], "duration 9h is over the maximum of 8h"),
        (["--role", "nosuchrole_{role}", "--duration", "1h"], "is not requestable on instance 'pg'"),
        (["--role", "{role}", "--duration", "0s"], "duration '0s' is zero"),
        (["--role", "{role}", "--duration=-5m"], "is negative"),
        (["--role", "{role}", "--duration", "soon"], "is not understood"),
        (["--role", "{role}", "--duration", "99999h"], "longer than a year"),
    ],
)
async def test_bad_request_refused(make_stack, roles: Roles, pg, args, message) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    argv = [a.format(role=role) for a in args]
    r = await _request(stack, *argv, "--as", f"{login}@example.com")
    assert r.code == 2, r
    assert message in r.err
    assert r.err.count("\n") == 1 or "usage:" in r.err  # one line (argparse adds its usage)
    assert not pg.is_member(login, role)


async def test_unknown_instance_missing_role_and_login(make_stack, roles: Roles) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role, roles.name("ghost")])
    r = await stack.cli(
        "request", "--instance", "nope", "--role", role, "--duration", "1h", "--as", f"{login}@x.io"
    )
    assert r.code == 2 and "unknown instance 'nope' (configured: pg)" in r.err
    r = await _request(stack, "--role", roles.name("ghost"), "--duration", "1h", "--as", f"{login}@x.io")
    assert r.code == 2 and f"role '{roles.name('ghost')}' does not exist on instance 'pg'" in r.err
    r = await _request(stack, "--role", role, "--duration", "1h", "--as", "nobody@example.com")
    assert r.code == 2
    assert "database login 'nobody' (for nobody@example.com) does not exist" in r.err
    r = await stack.cli("status", "access/pg/none/nobody@example.com")
    assert r.code == 2 and "no request with id" in r.err
    r = await stack.cli("approve", "access/pg/none/nobody@example.com", "--as", "dba@example.com")
    assert r.code == 2 and "no request with id" in r.err


@pytest.mark.parametrize(
    ("options", "rule"),
    [
        ("NOLOGIN SUPERUSER", "has SUPERUSER"),
        ("NOLOGIN CREATEROLE", "has CREATEROLE"),
        ("NOLOGIN BYPASSRLS", "has BYPASSRLS"),
        ("NOLOGIN REPLICATION", "has REPLICATION"),
        ("LOGIN", "can log in"),
    ],
)
async def test_superuser_grade_role_refused(make_stack, roles: Roles, pg, options, rule) -> None:
    risky = roles.create(roles.name("risky"), options)
    login = roles.login()
    stack = await make_stack([risky])
    r = await _request(stack, "--role", risky, "--duration", "1h", "--as", f"{login}@example.com")
    assert r.code == 2
    assert f'role "{risky}" ' in r.err and rule in r.err
    assert not pg.is_member(login, risky)


async def test_role_containing_a_dangerous_role_refused(make_stack, roles: Roles, pg) -> None:
    wrapper = roles.role("wrapper")
    pg.execute(sql.SQL("GRANT pg_execute_server_program TO {}").format(sql.Identifier(wrapper)))
    login = roles.login()
    stack = await make_stack([roles.prefix + "_*"])  # a glob lets the wrapper through config
    r = await _request(stack, "--role", wrapper, "--duration", "1h", "--as", f"{login}@example.com")
    assert r.code == 2
    assert 'contains the predefined role "pg_execute_server_program"' in r.err
    assert not pg.is_member(login, wrapper)


@pytest.mark.parametrize(
    "suffix",
    ['x"; DROP TABLE secret; --', "with space", "semi;colon", "Ünïcødé_ロール", "MixedCase"],
)
async def test_hostile_role_names_are_identifiers(make_stack, roles: Roles, pg, suffix) -> None:
    role = roles.create(roles.name(suffix))
    login = roles.create(roles.name("o'brien; x"), "LOGIN")
    pg.execute("CREATE TABLE IF NOT EXISTS secret (x int)")
    stack = await make_stack([role], logins={f"obrien{roles.prefix}@example.com": login})
    email = f"obrien{roles.prefix}@example.com"
    r = await _request(stack, "--role", role, "--duration", "1h", "--as", email)
    assert r.code == 0, r.err
    rid = r.last_line
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.GRANTED)
    assert pg.is_member(login, role)
    assert pg.execute("SELECT to_regclass('secret') IS NOT NULL")[0][0]
    # Case matters: the lower-cased twin is another role, and it was not touched.
    if suffix == "MixedCase":
        assert not pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role.lower()])
    await stack.cli("relinquish", rid, "--as", email)
    await stack.wait_state(rid, RequestState.RELINQUISHED)
    assert not pg.is_member(login, role)


async def test_already_member_refused(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(login)))
    stack = await make_stack([role])
    r = await _request(stack, "--role", role, "--duration", "1h", "--as", f"{login}@example.com")
    assert r.code == 2
    assert f"'{login}' already has role '{role}'" in r.err


async def test_invalid_config_names_file_and_key(make_stack, roles: Roles, tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[instances.demo]\ndsn_env = "X"\nroles = ["a"]\napprovers = ["dba@example.com"]\n'
        'max_duration = "8x"\n'
    )
    stack = await make_stack([roles.role()], worker=False)
    stack.config_path = bad
    r = await stack.cli("worker")
    assert r.code == 2
    assert f"{bad}: instances.demo.max_duration: duration '8x' is not understood" in r.err
    bad.write_text('[instances.demo]\ndsn_env = "X"\nroles = ["a"]\n')
    r = await stack.cli("worker")
    assert r.code == 2
    assert "instances.demo: needs at least one approver" in r.err


async def test_asking_again_right_after_a_refusal_is_checked_again(make_stack, roles: Roles) -> None:
    """The refused run stays open while it tells its requester; a new request waits for it.

    The fake Slack holds that last message for 3 s, so the second request meets the refused
    run still open: it must get the check's answer again, not "already have a request".
    """
    from tests.fake_slack import world_context

    missing = roles.name("missing")  # allowed by the config, absent from the database
    async with world_context(make_stack, roles, more_roles=[missing]) as w:
        w.fake.hang("chat.postMessage", seconds=3)
        refusal = f"role {missing!r} does not exist on instance 'pg'"
        for _ in range(2):
            r = await w.stack.cli(
                "request", "--instance", "pg", "--role", missing, "--duration", "1h", "--as", w.email
            )
            assert r.code == 2 and refusal in r.err, r.err


async def test_a_refused_run_that_does_not_close_in_time_is_named_as_such(
    make_stack, roles: Roles, monkeypatch
) -> None:
    from rolecall import operations
    from tests.fake_slack import world_context

    monkeypatch.setattr(operations, "_CLOSING_WAIT", 0.5)
    missing = roles.name("missing")
    async with world_context(make_stack, roles, more_roles=[missing]) as w:
        w.fake.hang("chat.postMessage", seconds=4)
        args = ("request", "--instance", "pg", "--role", missing, "--duration", "1h", "--as", w.email)
        r = await w.stack.cli(*args)
        assert r.code == 2 and f"role {missing!r} does not exist" in r.err, r.err
        r = await w.stack.cli(*args)
        assert r.code == 2
        assert r.err.strip() == (
            f"rolecall: error: your previous request for role {missing!r} on instance 'pg' "
            f"(access/pg/{missing}/{w.email}) is rejected and still closing: ask again in a minute"
        )
