"""`rolecall explain`: what a membership of a role really grants, on real PostgreSQL 15 and 16.

Every fixture's result is compared whole with the model it must produce. Only the list of
databases read and not read is left out of that comparison: it depends on the cluster
(other tests create databases meanwhile), and is checked for the databases a test owns.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from rolecall import explain as ex
from rolecall.privileges.model import (
    Attribute,
    DefaultPrivilege,
    Grant,
    Member,
    PredefinedEffect,
    Privileges,
    RlsTable,
    Unreadable,
    diff,
)
from rolecall.privileges.predefined import EFFECTS
from rolecall.privileges.render import SUMMARY_MAX
from tests.conftest import Postgres, Roles

# ---- helpers ---------------------------------------------------------------------------


def run(pg: Postgres, text: str, dbname: str | None = None, **names: str) -> None:
    """Execute SQL with identifiers filled in safely, in the test database or `dbname`."""
    query = sql.SQL(text).format(**{k: sql.Identifier(v) for k, v in names.items()})
    dsn = make_conninfo(pg.dsn, dbname=dbname) if dbname else pg.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query)


def grant(db: str, schema: str, kind: str, name: str, privilege: str, *holders: str, **kw: Any) -> Grant:
    return Grant(
        database=db,
        schema_name=schema,
        kind=kind,
        name=name,
        privilege=privilege,
        holders=list(holders),
        **kw,
    )


def expected(pg: Postgres, role: str, **fields: Any) -> Privileges:
    return Privileges(role=role, server_version=pg.version, **fields).sort()


def core(p: Privileges) -> dict[str, Any]:
    return p.model_dump(exclude={"databases", "unreadable"})


def line(p: Privileges) -> str:
    """The Slack line, without the count of databases not read (that depends on the cluster)."""
    return ex.summary(p.model_copy(update={"unreadable": []}))


async def explain(
    pg: Postgres, role: str, dsn: str | None = None, other_dbs: bool = True, **kw: Any
) -> Privileges:
    dsn = dsn or pg.dsn
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await ex.explain(conn, role, connect=ex.connector(dsn) if other_dbs else None, **kw)


@pytest.fixture(scope="module")
def db(pg: Postgres) -> str:
    return str(pg.execute("SELECT current_database()")[0][0])


@pytest.fixture
def second_db(pg: Postgres, roles: Roles) -> Iterator[str]:
    """A database of this test's own, dropped before its roles (they hold privileges in it)."""
    name = roles.name("db")
    run(pg, "CREATE DATABASE {d}", d=name)
    yield name
    run(pg, "DROP DATABASE {d} WITH (FORCE)", d=name)


def assert_matches_postgres(pg: Postgres, p: Privileges) -> None:
    """The closure agrees with PostgreSQL's own answer (pg_has_role USAGE, and SET on 16)."""
    for m in p.memberships:
        usage, member = pg.execute(
            "SELECT pg_has_role(%s, %s, 'USAGE'), pg_has_role(%s, %s, 'MEMBER')",
            [p.role, m.role, p.role, m.role],
        )[0]
        assert member and usage == (m.access == "inherited"), m
        if pg.version >= 160000:
            assert pg.execute("SELECT pg_has_role(%s, %s, 'SET')", [p.role, m.role])[0][0] == m.set_role, m


def assert_read(p: Privileges, *databases: str) -> None:
    for name in databases:
        assert name in p.databases, p.unreadable
    assert Unreadable(database="template0", reason="does not allow connections (datallowconn is false)") in (
        p.unreadable
    )
    assert (
        Unreadable(
            database="template1",
            reason="template database: not read (a session in it makes CREATE DATABASE from it fail)",
        )
        in p.unreadable
    )


# ---- fixtures of roles -----------------------------------------------------------------


async def test_nested_roles_three_deep(pg: Postgres, roles: Roles, schema: str, db: str) -> None:
    r, mid, base = roles.role("r"), roles.role("mid"), roles.role("base")
    run(pg, "GRANT {mid} TO {r}; GRANT {base} TO {mid}", r=r, mid=mid, base=base)
    run(pg, "CREATE TABLE {s}.tb (x int); CREATE TABLE {s}.tm (x int)", s=schema)
    run(
        pg,
        "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON {s}.tb TO {base}; GRANT INSERT ON {s}.tm TO {mid}",
        s=schema,
        r=r,
        mid=mid,
        base=base,
    )

    p = await explain(pg, r)

    assert core(p) == core(
        expected(
            pg,
            r,
            memberships=[
                Member(role=base, path=[r, mid, base], access="inherited", set_role=True),
                Member(role=mid, path=[r, mid], access="inherited", set_role=True),
            ],
            grants=[
                grant(db, schema, "schema", schema, "USAGE", r),
                grant(db, schema, "table", "tb", "SELECT", base),
                grant(db, schema, "table", "tm", "INSERT", mid),
            ],
        )
    )
    assert_read(p, db)
    assert_matches_postgres(pg, p)
    assert (
        line(p) == f"USAGE on schema {schema} · SELECT on {schema}.tb · INSERT on {schema}.tm · no RLS bypass"
    )
    text = ex.render_text(p)
    assert f'role "{r}" on PostgreSQL {pg.version // 10000}.{pg.version % 10000}: lendable\n' in text
    assert f"    schema {schema}:\n      USAGE on schema {schema}\n      SELECT on table tb\n" in text
    assert f"  {base}  inherited, SET ROLE; through {mid}\n" in text


async def test_role_reached_only_through_set(pg: Postgres, roles: Roles, schema: str, db: str) -> None:
    """16: INHERIT FALSE, SET TRUE. 15 has no such option: the same through a NOINHERIT role."""
    r = roles.create(roles.name("r"), "NOLOGIN NOINHERIT" if pg.version < 160000 else "NOLOGIN")
    setr, setbase = roles.role("setr"), roles.role("setbase")
    run(
        pg,
        "CREATE TABLE {s}.t1 (x int); CREATE TABLE {s}.t2 (x int); CREATE TABLE {s}.t3 (x int); "
        "CREATE TABLE {s}.t4 (x int); CREATE TABLE {s}.t5 (x int)",
        s=schema,
    )
    run(
        pg,
        "GRANT {setbase} TO {setr}; GRANT SELECT ON {s}.t1 TO {setr}; GRANT SELECT ON {s}.t2 TO {setbase}",
        s=schema,
        setr=setr,
        setbase=setbase,
    )
    set_only = [
        grant(db, schema, "table", "t1", "SELECT", setr),
        grant(db, schema, "table", "t2", "SELECT", setbase),
    ]
    members = [
        Member(role=setbase, path=[r, setr, setbase], access="set_role_only", set_role=True),
        Member(role=setr, path=[r, setr], access="set_role_only", set_role=True),
    ]
    if pg.version >= 160000:
        inh, neither = roles.role("inh"), roles.role("neither")
        run(
            pg,
            "GRANT {setr} TO {r} WITH INHERIT FALSE, SET TRUE; "
            "GRANT {inh} TO {r} WITH INHERIT TRUE, SET FALSE; "
            "GRANT {neither} TO {r} WITH INHERIT FALSE, SET FALSE; GRANT SELECT ON {s}.t3 TO {inh}; "
            "GRANT SELECT ON {s}.t4 TO {neither}; GRANT SELECT ON {s}.t5 TO {inh}, {setr}",
            r=r,
            setr=setr,
            inh=inh,
            neither=neither,
            s=schema,
        )
        want = expected(
            pg,
            r,
            memberships=[
                *members,
                Member(role=inh, path=[r, inh], access="inherited", set_role=False),
                Member(role=neither, path=[r, neither], access="membership_only", set_role=False),
            ],
            grants=[
                grant(db, schema, "table", "t3", "SELECT", inh),
                grant(db, schema, "table", "t5", "SELECT", inh),
            ],
            set_role_only=set_only,
            notes=[ex.NOTE_SET_16],
        )
        want_line = f"SELECT on 2 tables in {schema} (t3, t5) · no RLS bypass · +2 by SET ROLE only"
    else:
        run(pg, "GRANT {setr} TO {r}", r=r, setr=setr)
        want = expected(pg, r, memberships=members, set_role_only=set_only, notes=[ex.NOTE_SET_15])
        want_line = "no privileges beyond PUBLIC's · no RLS bypass · +2 by SET ROLE only"

    p = await explain(pg, r)

    assert core(p) == core(want)
    assert_matches_postgres(pg, p)
    assert line(p) == want_line
    assert "reachable by SET ROLE only (not inherited, not counted above):" in ex.render_text(p)


async def test_column_privileges(pg: Postgres, roles: Roles, schema: str, db: str) -> None:
    r = roles.role("r")
    run(
        pg,
        "CREATE TABLE {s}.t (a int, b int, c int); GRANT SELECT (a, b), UPDATE (b) ON {s}.t TO {r}",
        s=schema,
        r=r,
    )

    p = await explain(pg, r)

    assert core(p) == core(
        expected(
            pg,
            r,
            grants=[
                grant(db, schema, "column", "t", "SELECT", r, column="a"),
                grant(db, schema, "column", "t", "SELECT", r, column="b"),
                grant(db, schema, "column", "t", "UPDATE", r, column="b"),
            ],
        )
    )
    assert line(p) == f"SELECT (a, b) on {schema}.t · UPDATE (b) on {schema}.t · no RLS bypass"
    assert "      SELECT (a, b) on table t\n      UPDATE (b) on table t\n" in ex.render_text(p)


async def test_privileges_in_a_second_database(
    pg: Postgres, roles: Roles, schema: str, db: str, second_db: str
) -> None:
    r = roles.role("r")
    run(
        pg,
        "CREATE TABLE {s}.here (x int); GRANT SELECT ON {s}.here TO {r}; GRANT CREATE ON DATABASE {d} TO {r}",
        s=schema,
        r=r,
        d=second_db,
    )
    run(
        pg,
        "CREATE SCHEMA app; CREATE TABLE app.orders (x int); CREATE SEQUENCE app.seq; "
        "GRANT USAGE ON SCHEMA app TO {r}; GRANT SELECT, INSERT ON app.orders TO {r}; "
        "GRANT USAGE ON SEQUENCE app.seq TO {r}",
        dbname=second_db,
        r=r,
    )

    p = await explain(pg, r)

    here = grant(db, schema, "table", "here", "SELECT", r)
    on_db = grant(second_db, "", "database", second_db, "CREATE", r)
    assert core(p) == core(
        expected(
            pg,
            r,
            grants=[
                here,
                on_db,
                grant(second_db, "app", "schema", "app", "USAGE", r),
                grant(second_db, "app", "sequence", "seq", "USAGE", r),
                grant(second_db, "app", "table", "orders", "SELECT", r),
                grant(second_db, "app", "table", "orders", "INSERT", r),
            ],
        )
    )
    assert_read(p, db, second_db)
    assert line(p) == (
        f"SELECT on {db}:{schema}.here · CREATE on database {second_db} · USAGE on schema {second_db}:app · "
        f"USAGE on sequence {second_db}:app.seq · SELECT, INSERT on {second_db}:app.orders · no RLS bypass"
    )

    # Without a way to reach other databases: only the shared catalog's database privileges,
    # and the database is listed as not read, with the reason.
    alone = await explain(pg, r, other_dbs=False)
    assert core(alone) == core(expected(pg, r, grants=[here, on_db]))
    assert Unreadable(
        database=second_db, reason="not read: only the instance's own database was asked for"
    ) in (alone.unreadable)


async def test_default_privileges(pg: Postgres, roles: Roles, schema: str, db: str) -> None:
    r, creator, x = roles.role("r"), roles.role("creator"), roles.role("x")
    run(
        pg,
        "ALTER DEFAULT PRIVILEGES FOR ROLE {r} IN SCHEMA {s} GRANT SELECT ON TABLES TO {x}; "
        "ALTER DEFAULT PRIVILEGES FOR ROLE {c} IN SCHEMA {s} GRANT INSERT, UPDATE ON TABLES TO {r}; "
        "ALTER DEFAULT PRIVILEGES FOR ROLE {c} GRANT USAGE ON SEQUENCES TO {r}",
        r=r,
        c=creator,
        x=x,
        s=schema,
    )

    p = await explain(pg, r)

    def dp(direction: Any, who: str, where: str, objects: str, to: str, privilege: str) -> DefaultPrivilege:
        return DefaultPrivilege(
            database=db,
            direction=direction,
            creator=who,
            schema_name=where,
            object_type=objects,
            grantee=to,
            privilege=privilege,
        )

    # pg_shdepend records R as the owner of its own pg_default_acl entry: the safety check
    # (the same query) refuses the role unless it is in unsafe_allowed.
    lasting = [
        f'role "{r}" owns 1 object in database "{db}" (default acl for role {r} in schema {schema} on tables)'
    ]
    want = expected(
        pg,
        r,
        verdict="refused",
        default_privileges=[
            dp("creates", r, schema, "tables", x, "SELECT"),
            dp("receives", creator, schema, "tables", r, "INSERT"),
            dp("receives", creator, schema, "tables", r, "UPDATE"),
            dp("receives", creator, "", "sequences", r, "USAGE"),
        ],
        lasting=lasting,
    )
    assert core(p) == core(want)
    assert line(p) == (
        "REFUSED (owns objects) · no privileges beyond PUBLIC's · no RLS bypass · "
        "default privileges on future objects of 1 role"
    )
    exempt = await explain(pg, r, unsafe_allowed=True)
    assert core(exempt) == core(want.model_copy(update={"verdict": "lendable_by_unsafe_allowed"}))
    assert line(exempt).startswith("lendable only by unsafe_allowed (owns objects) · ")
    assert "lendable only because the instance lists it in unsafe_allowed" in ex.render_text(exempt)


async def test_row_level_security_and_bypassrls(pg: Postgres, roles: Roles, schema: str, db: str) -> None:
    r, other, own = roles.role("r"), roles.role("other"), roles.role("own")
    byp = roles.create(roles.name("byp"), "NOLOGIN BYPASSRLS")
    run(pg, "GRANT {byp} TO {r}; GRANT {own} TO {r}", r=r, byp=byp, own=own)
    run(
        pg,
        "CREATE TABLE {s}.t (a int); ALTER TABLE {s}.t ENABLE ROW LEVEL SECURITY; "
        "GRANT SELECT ON {s}.t TO {r}; "
        "CREATE POLICY p_r ON {s}.t FOR SELECT TO {r} USING (true); "
        "CREATE POLICY p_other ON {s}.t TO {other} USING (true); "
        "CREATE TABLE {s}.t2 (a int); ALTER TABLE {s}.t2 ENABLE ROW LEVEL SECURITY; "
        "GRANT INSERT ON {s}.t2 TO {r}; "
        "CREATE TABLE {s}.t3 (a int); GRANT SELECT ON {s}.t3 TO {r}; "
        "CREATE TABLE {s}.t4 (a int); ALTER TABLE {s}.t4 ENABLE ROW LEVEL SECURITY; "
        "ALTER TABLE {s}.t4 OWNER TO {own}",
        s=schema,
        r=r,
        other=other,
        own=own,
    )

    p = await explain(pg, r)

    owned = [
        grant(db, schema, "table", "t4", priv, own, owner=own)
        for priv in ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]
    ]
    assert core(p) == core(
        expected(
            pg,
            r,
            verdict="refused",
            memberships=[
                Member(role=byp, path=[r, byp], access="inherited", set_role=True),
                Member(role=own, path=[r, own], access="inherited", set_role=True),
            ],
            grants=[
                grant(db, schema, "table", "t", "SELECT", r),
                grant(db, schema, "table", "t2", "INSERT", r),
                grant(db, schema, "table", "t3", "SELECT", r),
                *owned,
            ],
            attributes=[Attribute(role=byp, attribute="BYPASSRLS", path=[r, byp], refused=True)],
            bypass_rls=[byp],
            rls=[
                RlsTable(database=db, schema_name=schema, name="t", privileges=["SELECT"], policies=["p_r"]),
                RlsTable(database=db, schema_name=schema, name="t2", privileges=["INSERT"]),
                RlsTable(
                    database=db,
                    schema_name=schema,
                    name="t4",
                    privileges=["SELECT", "INSERT", "UPDATE", "DELETE"],
                    bypass="owner",
                ),
            ],
            lasting=[f'role "{own}" owns 1 object in database "{db}" (table {schema}.t4)'],
            notes=[ex.NOTE_SET_16 if pg.version >= 160000 else ex.NOTE_SET_15],
        )
    )
    assert line(p) == (
        f"REFUSED (BYPASSRLS on {byp}) · SELECT on 3 tables in {schema} (t, t3, t4) · "
        f"INSERT on 2 tables in {schema} (t2, t4) · "
        f"UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER on {schema}.t4 · "
        f"BYPASSRLS after SET ROLE {byp} · bypasses RLS on 1 table (owner)"
    )
    assert len(ex.summary(p)) <= SUMMARY_MAX
    text = ex.render_text(p)
    assert f"  {db}: {schema}.t2: INSERT; applies; policies: none (no rows unless bypassed)\n" in text
    assert f"attribute BYPASSRLS on {byp} ({r} -> {byp}): refused by rolecall\n" in text


async def test_predefined_role_effect(pg: Postgres, roles: Roles) -> None:
    r = roles.role("r")
    run(pg, "GRANT pg_read_all_data TO {r}", r=r)

    p = await explain(pg, r)

    path = [r, "pg_read_all_data"]
    assert core(p) == core(
        expected(
            pg,
            r,
            verdict="refused",
            memberships=[Member(role="pg_read_all_data", path=path, access="inherited", set_role=True)],
            predefined=[
                PredefinedEffect(
                    role="pg_read_all_data", effect=EFFECTS["pg_read_all_data"], access="inherited", path=path
                )
            ],
            attributes=[
                Attribute(role="pg_read_all_data", attribute="predefined role", path=path, refused=True)
            ],
        )
    )
    assert EFFECTS["pg_read_all_data"].startswith(
        "SELECT on every table, view and sequence in every database, USAGE on every schema"
    )
    assert line(p) == (
        "REFUSED (pg_read_all_data is predefined) · contains pg_read_all_data · "
        "no privileges beyond PUBLIC's · no RLS bypass"
    )


async def test_login_difference_and_diff(pg: Postgres, roles: Roles, schema: str, db: str) -> None:
    r, shared, extra = roles.role("r"), roles.role("shared"), roles.role("extra")
    login, reader = roles.login("alice"), roles.login("reader")
    run(
        pg,
        "CREATE TABLE {s}.t1 (x int); CREATE TABLE {s}.t2 (x int); CREATE TABLE {s}.t3 (x int); "
        "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON {s}.t1 TO {r}; GRANT {shared} TO {r}; "
        "GRANT {extra} TO {r}; GRANT SELECT ON {s}.t2 TO {shared}; GRANT SELECT ON {s}.t3 TO {extra}; "
        "GRANT INSERT ON {s}.t1 TO {extra}",
        s=schema,
        r=r,
        shared=shared,
        extra=extra,
    )
    run(
        pg,
        "GRANT SELECT ON {s}.t1 TO {l}; GRANT {shared} TO {l}; GRANT pg_read_all_data TO {reader}",
        s=schema,
        l=login,
        shared=shared,
        reader=reader,
    )
    members = [
        Member(role=extra, path=[r, extra], access="inherited", set_role=True),
        Member(role=shared, path=[r, shared], access="inherited", set_role=True, already=True),
    ]
    usage = grant(db, schema, "schema", schema, "USAGE", r)
    insert = grant(db, schema, "table", "t1", "INSERT", extra)
    select3 = grant(db, schema, "table", "t3", "SELECT", extra)

    p = await explain(pg, r, login=login)

    assert core(p) == core(
        expected(pg, r, login=login, memberships=members, grants=[usage, insert, select3], already_held=2)
    )
    assert line(p) == (
        f"USAGE on schema {schema} · SELECT on {schema}.t3 · INSERT on {schema}.t1 · no RLS bypass · "
        f"beyond {login}'s own (2 already held)"
    )

    # pg_read_all_data already gives every SELECT and schema USAGE: only INSERT is new.
    p = await explain(pg, r, login=reader)
    members[1].already = False
    assert core(p) == core(
        expected(pg, r, login=reader, memberships=members, grants=[insert], already_held=4)
    )

    # Two snapshots of the role: diff lists exactly what it gained in between.
    old = await explain(pg, r)
    run(pg, "GRANT DELETE ON {s}.t2 TO {shared}", s=schema, shared=shared)
    new = await explain(pg, r)
    gained = diff(old, new)
    assert core(gained) == core(expected(pg, r, grants=[grant(db, schema, "table", "t2", "DELETE", shared)]))
    assert line(gained) == f"DELETE on {schema}.t2 · no RLS bypass"
    assert diff(new, new).empty and not gained.empty
    assert Privileges.model_validate_json(new.model_dump_json()) == new


async def test_summary_of_500_tables(pg: Postgres, roles: Roles, schema: str, db: str) -> None:
    r = roles.role("r")
    creates = [
        sql.SQL("CREATE TABLE {}.{} (x int)").format(sql.Identifier(schema), sql.Identifier(f"t{i:03}"))
        for i in range(1, 501)
    ]
    pg.execute(sql.SQL("; ").join(creates))
    run(
        pg, "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}", s=schema, r=r
    )

    p = await explain(pg, r)

    tables = [grant(db, schema, "table", f"t{i:03}", "SELECT", r) for i in range(1, 501)]
    assert core(p) == core(expected(pg, r, grants=[grant(db, schema, "schema", schema, "USAGE", r), *tables]))
    assert line(p) == f"USAGE on schema {schema} · SELECT on 500 tables in {schema} · no RLS bypass"
    names = ", ".join(f"t{i:03}" for i in range(1, 11))
    assert f"      SELECT on 500 tables: {names} and 490 more (--json lists all)\n" in ex.render_text(p)
    assert len(json.loads(p.model_dump_json())["grants"]) == 501


async def test_summary_of_500_tables_in_25_schemas(pg: Postgres, roles: Roles, db: str) -> None:
    """Per-schema groups no longer fit in one line: it falls back to counts per database."""
    r = roles.role("r")
    schemas = [roles.name(f"s{i:02}") for i in range(25)]
    statements = []
    for s in schemas:
        statements.append(
            sql.SQL("CREATE SCHEMA {0}; GRANT USAGE ON SCHEMA {0} TO {1}").format(
                sql.Identifier(s), sql.Identifier(r)
            )
        )
        for i in range(20):
            statements.append(
                sql.SQL("CREATE TABLE {}.{} (x int)").format(sql.Identifier(s), sql.Identifier(f"t{i:02}"))
            )
        statements.append(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(s), sql.Identifier(r)
            )
        )
        statements.append(
            sql.SQL("GRANT UPDATE ON {}.t00, {}.t01, {}.t02, {}.t03, {}.t04 TO {}").format(
                *[sql.Identifier(s)] * 5, sql.Identifier(r)
            )
        )
    try:
        pg.execute(sql.SQL("; ").join(statements))
        p = await explain(pg, r)
    finally:
        pg.execute(
            sql.SQL("; ").join(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(s)) for s in schemas
            )
        )

    assert len(p.grants) == 25 + 500 + 125
    assert sum(g.kind == "table" and g.privilege == "UPDATE" for g in p.grants) == 125
    summary = line(p)
    assert summary == (
        "USAGE on 25 schemas · SELECT on 500 tables in 25 schemas · UPDATE on 125 tables in 25 schemas · "
        "no RLS bypass"
    )
    assert len(summary) <= SUMMARY_MAX


def test_summary_stays_short_when_even_counts_do_not_fit() -> None:
    """A pure function: a role with distinct privileges on every kind of object."""
    kinds = [
        "table",
        "view",
        "sequence",
        "function",
        "procedure",
        "type",
        "domain",
        "language",
        "foreign server",
        "foreign-data wrapper",
        "large object",
        "tablespace",
        "materialized view",
        "foreign table",
        "aggregate",
        "parameter",
        "schema",
        "database",
    ]
    grants = []
    for k in kinds:
        for i in range(3):
            grants.append(grant("app", "s", k, f"{k}{i}", "SELECT", "r"))
        grants.append(grant("app", "s", k, f"{k}0", "INSERT", "r"))
    p = Privileges(role="r", server_version=160002, grants=grants).sort()
    summary = ex.summary(p)
    assert len(summary) <= SUMMARY_MAX
    pieces = summary.split(" · ")
    shown = pieces[:-2]
    assert pieces[-1] == "no RLS bypass"
    assert pieces[-2] == f"+{2 * len(kinds) - len(shown)} more groups"
    assert shown[:4] == [
        "SELECT on 3 databases",
        "INSERT on 1 database",
        "SELECT on 3 schemas",
        "INSERT on 1 schema",
    ]


# ---- the CLI ---------------------------------------------------------------------------


async def test_cli_bad_input_and_json(make_stack, pg: Postgres, roles: Roles, schema: str, db: str) -> None:
    r = roles.role("r")
    run(pg, "CREATE TABLE {s}.t (x int); GRANT SELECT ON {s}.t TO {r}", s=schema, r=r)
    stack = await make_stack([r], worker=False)

    bad = await stack.cli("explain", "--instance", "nope", "--role", r)
    assert (bad.code, bad.out, bad.err) == (
        2,
        "",
        "rolecall: error: unknown instance 'nope' (configured: pg)\n",
    )
    ghost = roles.name("ghost")
    bad = await stack.cli("explain", "--instance", "pg", "--role", ghost)
    assert (bad.code, bad.err) == (2, f"rolecall: error: role '{ghost}' does not exist on instance 'pg'\n")
    bad = await stack.cli("explain", "--instance", "pg", "--role", r, "--login", ghost)
    assert (bad.code, bad.err) == (2, f"rolecall: error: login '{ghost}' does not exist on instance 'pg'\n")
    bad = await stack.cli("explain", "--instance", "pg", "--role", "x" * 64)
    assert bad.code == 2 and len(bad.err.splitlines()) == 1 and "63-byte limit" in bad.err

    out = await stack.cli("explain", "--instance", "pg", "--role", r, "--json")
    assert out.code == 0, out.err
    got = Privileges.model_validate_json(out.out)
    assert core(got) == core(expected(pg, r, grants=[grant(db, schema, "table", "t", "SELECT", r)]))
    assert_read(got, db)

    out = await stack.cli("explain", "--instance", "pg", "--role", r)
    assert out.code == 0, out.err
    assert out.out.startswith(f'role "{r}" on PostgreSQL {pg.version // 10000}.')
    assert "      SELECT on table t\n" in out.out


async def test_cli_under_the_least_privilege_login(
    make_stack, pg: Postgres, roles: Roles, schema: str, db: str, second_db: str
) -> None:
    """The login `setup-sql` prints reads the same catalogs; a database without CONNECT for
    it is listed as not read, with the reason, and nothing in it is guessed."""
    r, mid = roles.role("r"), roles.role("mid")
    admin = roles.name("admin")
    roles.created.append(admin)
    run(
        pg,
        "GRANT {mid} TO {r}; CREATE TABLE {s}.t (x int); GRANT SELECT ON {s}.t TO {mid}; "
        "ALTER TABLE {s}.t ENABLE ROW LEVEL SECURITY; GRANT TEMPORARY ON DATABASE {d} TO {r}; "
        "REVOKE CONNECT ON DATABASE {d} FROM PUBLIC",
        r=r,
        mid=mid,
        s=schema,
        d=second_db,
    )
    run(pg, "CREATE TABLE hidden (x int); GRANT SELECT ON hidden TO {r}", dbname=second_db, r=r)
    bootstrap = await make_stack([r], worker=False)
    script = await bootstrap.cli("setup-sql", "--instance", "pg", "--login", admin)
    assert script.code == 0, script.err
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(script.out.encode())
    stack = await make_stack([r], dsn=make_conninfo(pg.dsn, user=admin), worker=False)

    out = await stack.cli("explain", "--instance", "pg", "--role", r, "--json")

    assert out.code == 0, out.err
    least = Privileges.model_validate_json(out.out)
    full = await explain(pg, r)  # as the superuser
    assert grant(second_db, "public", "table", "hidden", "SELECT", r) in full.grants
    assert second_db in full.databases
    assert core(least) == core(
        full.model_copy(
            update={"grants": [g for g in full.grants if g.database != second_db or g.kind == "database"]}
        )
    )
    assert grant(second_db, "", "database", second_db, "TEMPORARY", r) in least.grants
    assert Unreadable(
        database=second_db, reason=f"the admin login {admin!r} has no CONNECT privilege on it"
    ) in (least.unreadable)
    assert_read(least, db)
    text = await stack.cli("explain", "--instance", "pg", "--role", r)
    assert text.code == 0, text.err
    assert " database not read" in ex.summary(least) and " database not read" not in line(least)
    assert f"not read: {second_db}: the admin login {admin!r} has no CONNECT privilege on it\n" in text.out
