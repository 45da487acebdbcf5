"""The approvers' card says what the role grants, and the grant refuses a role that gained since.

Real PostgreSQL (15 and 16), the real worker and Bolt app, Slack as the local fake that
validates Block Kit like Slack does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import sql

from rolecall import slack_blocks as kit
from rolecall.models import PrivilegesSnapshot, RequestState
from rolecall.privileges.model import Grant, Privileges
from rolecall.privileges.snapshot import DETAIL_MAX, cut_lines, digest, gained
from tests.conftest import Postgres, Roles, eventually
from tests.fake_slack import APPROVERS_CHANNEL, DBA, World, action_ids, block_errors, text_of, world_context


def run(pg: Postgres, text: str, **names: str) -> None:
    pg.execute(sql.SQL(text).format(**{k: sql.Identifier(v) for k, v in names.items()}))


@pytest.fixture
def schemas(pg: Postgres) -> Iterator[list[str]]:
    """Schemas a test creates (names appended by the test), dropped before its roles."""
    made: list[str] = []
    yield made
    for name in made:
        run(pg, "DROP SCHEMA IF EXISTS {s} CASCADE", s=name)


def assert_line(line: str, expected: str) -> None:
    """Exactly `expected`, then how many of the cluster's other databases were not read.

    Only the instance's own database is read; how many others the cluster has depends on
    the machine (and on other tests creating databases meanwhile).
    """
    assert line.startswith(expected), line
    assert re.fullmatch(r"( · \d+ databases? not read)?", line[len(expected) :]), line


def card(w: World) -> dict[str, Any]:
    """The approvers' card: the channel's first message (replies under it come later)."""
    posts = w.posts(APPROVERS_CHANNEL)
    assert posts, "no approvers' card"
    return posts[0]


def privileges_line(message: dict[str, Any]) -> str:
    for block in message["blocks"]:
        for el in block.get("elements") or []:
            if "*Privileges:*" in str(el.get("text", "")):
                return str(el["text"])
    raise AssertionError(f"no privileges line in {json.dumps(message['blocks'])}")


async def test_card_summary_and_details_for_two_tables(
    make_stack: Any, roles: Roles, pg: Postgres, schemas: list[str]
) -> None:
    async with world_context(make_stack, roles) as w:
        schema = roles.name("s")
        schemas.append(schema)
        run(pg, "CREATE SCHEMA {s}", s=schema)
        for table in ("accounts", "orders"):
            run(pg, "CREATE TABLE {s}.{t} (id int)", s=schema, t=table)
            run(pg, "GRANT SELECT ON {s}.{t} TO {r}", s=schema, t=table, r=w.role)
        run(pg, "GRANT USAGE ON SCHEMA {s} TO {r}", s=schema, r=w.role)

        rid = await w.stack.request(w.login, w.role)
        status = await w.stack.wait_state(rid, RequestState.PENDING)
        expected = (
            f"USAGE on schema {schema} · SELECT on 2 tables in {schema} (accounts, orders) · no RLS bypass"
        )
        assert_line(status.privileges_summary, expected)
        await eventually(lambda: len(w.posts(APPROVERS_CHANNEL)) == 1, 15, "the approvers' card")
        msg = card(w)
        assert_line(privileges_line(msg), f":mag: *Privileges:* {expected}")
        assert action_ids(msg) == [kit.APPROVE, kit.DENY, kit.PRIVILEGES]

        r = await w.slack.click(DBA, kit.PRIVILEGES, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert r.status == 200
        modal = await w.view()
        assert modal["title"]["text"] == "Role privileges"
        body = modal["blocks"][1]["text"]["text"]
        db = pg.execute("SELECT current_database()")[0][0]
        assert (
            f"privileges:\n  database {db}:\n    schema {schema}:\n      USAGE on schema {schema}\n"
            "      SELECT on 2 tables: accounts, orders\n"
        ) in body


async def test_a_very_large_role_fits_slack(
    make_stack: Any, roles: Roles, pg: Postgres, schemas: list[str]
) -> None:
    """600 tables in 60 schemas: the line, the card and the modal stay within Block Kit limits."""
    async with world_context(make_stack, roles) as w:
        for i in range(60):
            schemas.append(roles.name(f"s{i:02d}"))
        pg.execute(
            sql.SQL(
                """DO $$ DECLARE s text; BEGIN
                     FOREACH s IN ARRAY {schemas} LOOP
                       EXECUTE format('CREATE SCHEMA %I', s);
                       EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', s, {role});
                       FOR t IN 1..10 LOOP
                         EXECUTE format('CREATE TABLE %I.%I (id int)', s, 'table_' || t);
                         EXECUTE format('GRANT SELECT ON %I.%I TO %I', s, 'table_' || t, {role});
                       END LOOP;
                     END LOOP; END $$"""
            ).format(
                schemas=sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(map(sql.Literal, schemas))),
                role=sql.Literal(w.role),
            )
        )
        rid = await w.stack.request(w.login, w.role)
        status = await w.stack.wait_state(rid, RequestState.PENDING)
        assert "SELECT on 600 tables in 60 schemas" in status.privileges_summary, status.privileges_summary
        assert len(status.privileges_detail) <= DETAIL_MAX
        assert status.privileges_detail.endswith("more lines; `rolecall explain` lists all")
        await eventually(lambda: len(w.posts(APPROVERS_CHANNEL)) == 1, 15, "the approvers' card")
        msg = card(w)
        assert block_errors(msg["blocks"]) == []
        assert "SELECT on 600 tables" in privileges_line(msg)

        r = await w.slack.click(DBA, kit.PRIVILEGES, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        assert r.status == 200
        modal = await w.view()  # the fake refuses a view over Slack's limits: this one passed
        assert "SELECT on 10 tables: table_1, table_10, table_2" in modal["blocks"][1]["text"]["text"]
        assert not [c for c in w.fake.calls if not c.response.get("ok", True)]


async def test_a_role_that_gains_privileges_before_approval_is_not_granted(
    make_stack: Any, roles: Roles, pg: Postgres, schemas: list[str]
) -> None:
    async with world_context(make_stack, roles) as w:
        schema = roles.name("s")
        schemas.append(schema)
        run(pg, "CREATE SCHEMA {s}", s=schema)
        run(pg, "CREATE TABLE {s}.t (id int)", s=schema)
        run(pg, "GRANT USAGE ON SCHEMA {s} TO {r}", s=schema, r=w.role)
        run(pg, "GRANT SELECT ON {s}.t TO {r}", s=schema, r=w.role)
        rid = await w.stack.request(w.login, w.role)
        await w.stack.wait_state(rid, RequestState.PENDING)
        await eventually(lambda: len(w.posts(APPROVERS_CHANNEL)) == 1, 15, "the approvers' card")
        first = card(w)
        assert f"SELECT on {schema}.t" in privileges_line(first)

        run(pg, "GRANT INSERT ON {s}.t TO {r}", s=schema, r=w.role)
        r = await w.slack.click(DBA, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=first["ts"])
        assert r.status == 200

        async def held() -> bool:
            s = await w.stack.status(rid)
            return s.state == RequestState.PENDING and any(x.startswith("grant held: ") for x in s.warnings)

        await eventually(held, 30, "the grant held")
        status = await w.stack.status(rid)
        assert not pg.is_member(w.login, w.role)
        assert status.approvals == [] and status.decided_by is None
        why = f"role {w.role!r} gained privileges since the request was checked: INSERT on {schema}.t"
        assert status.warnings == [f"grant held: {why} · no RLS bypass"]
        assert_line(
            status.privileges_summary,
            f"USAGE on schema {schema} · SELECT, INSERT on {schema}.t · no RLS bypass",
        )

        # The approvers are told what changed, and the card asks again with the new line.
        await eventually(lambda: len(w.posts(APPROVERS_CHANNEL)) == 2, 15, "the held reply")
        reply = w.posts(APPROVERS_CHANNEL)[1]
        assert "Grant held, nothing was granted." in text_of(reply)
        assert f"INSERT on {schema}.t" in text_of(reply)
        await eventually(lambda: "SELECT, INSERT" in privileges_line(card(w)), 15, "the card's new line")
        assert action_ids(card(w)) == [kit.APPROVE, kit.DENY, kit.PRIVILEGES]

        r = await w.slack.click(DBA, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=first["ts"])
        assert r.status == 200
        status = await w.stack.wait_state(rid, RequestState.GRANTED, timeout=30)
        assert pg.is_member(w.login, w.role) and status.decided_by == "dba@example.com"
        assert not [c for c in w.fake.calls if not c.response.get("ok", True)]


async def test_privileges_too_slow_to_read_are_said_not_guessed(
    make_stack: Any, roles: Roles, pg: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the budget the card says so, has no Details, and the grant is not held for it."""
    import activities.postgres

    monkeypatch.setattr(activities.postgres, "CHECK_PRIVILEGES_BUDGET", 0.0)
    async with world_context(make_stack, roles) as w:
        rid = await w.stack.request(w.login, w.role)
        status = await w.stack.wait_state(rid, RequestState.PENDING)
        assert status.privileges_summary == "privileges could not be read: reading them took longer than 0 s"
        assert status.privileges_detail == ""
        await eventually(lambda: len(w.posts(APPROVERS_CHANNEL)) == 1, 15, "the approvers' card")
        msg = card(w)
        assert privileges_line(msg).endswith(
            "privileges could not be read: reading them took longer than 0 s"
        )
        assert action_ids(msg) == [kit.APPROVE, kit.DENY]
        await w.slack.click(DBA, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
        await w.stack.wait_state(rid, RequestState.GRANTED, timeout=30)
        assert pg.is_member(w.login, w.role)


def test_a_large_role_is_compared_by_digest() -> None:
    """Over the size cap only a digest is kept: any change holds the grant, with counts."""

    def privs(*tables: str) -> Privileges:
        grants = [
            Grant(database="db", schema_name="s", kind="table", name=t, privilege="SELECT", holders=["r"])
            for t in tables
        ]
        return Privileges(role="r", server_version=160000, grants=grants).sort()

    before = PrivilegesSnapshot(digest=digest(privs("a", "b")), counts={"grants": 2})
    assert gained(before, privs("b", "a")) is None
    assert gained(before, privs("a", "b", "c")) == (
        "its privileges changed (2 privileges then, 3 now; too many to compare one by one)"
    )
    text = "\n".join(f"line {i}" for i in range(1000)) + "\n"
    cut = cut_lines(text)
    assert len(cut) <= DETAIL_MAX and cut.startswith("line 0\nline 1\n")
    kept = cut.count("\n")
    assert cut.endswith(f"… and {1000 - kept} more lines; `rolecall explain` lists all")
