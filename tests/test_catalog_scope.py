"""The catalog reads keep to the objects pg_shdepend names, and still see everything.

`rolecall.pg.acl_scope` turns the check's grant-option query and `explain`'s object query
from a scan of the whole catalogs into an index lookup per object the role is named on.
These tests hold the scoped reads to the whole scans' answers on real PostgreSQL, for every
kind of object that has an ACL, for owned objects, and for the roles pg_shdepend does not
index (pinned predefined roles, pg_database_owner), on 15 and 16 alike.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from rolecall import explain as ex
from rolecall import pg as rpg
from rolecall.errors import DangerousRole
from rolecall.privileges import catalog
from tests.conftest import Postgres, Roles

# Every kind of object with an ACL, granted to {r}; {o} owns some, {s} is a schema.
_GRANTS = """
CREATE TABLE {s}.t (a int, b int); CREATE VIEW {s}.v AS SELECT 1 AS x; CREATE SEQUENCE {s}.q;
CREATE FUNCTION {s}.f() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE PROCEDURE {s}.p() LANGUAGE sql AS 'SELECT 1';
CREATE DOMAIN {s}.d AS int; CREATE TYPE {s}.e AS ENUM ('x');
CREATE FOREIGN DATA WRAPPER {w}; CREATE SERVER {srv} FOREIGN DATA WRAPPER {w};
GRANT USAGE ON SCHEMA {s} TO {r};
GRANT SELECT, UPDATE ON {s}.t TO {r}; GRANT SELECT (a), INSERT (b) ON {s}.t TO {r};
GRANT SELECT ON {s}.v TO {r}; GRANT USAGE ON SEQUENCE {s}.q TO {r};
GRANT EXECUTE ON FUNCTION {s}.f() TO {r}; GRANT EXECUTE ON PROCEDURE {s}.p() TO {r};
GRANT USAGE ON DOMAIN {s}.d TO {r}; GRANT USAGE ON TYPE {s}.e TO {r};
GRANT USAGE ON FOREIGN DATA WRAPPER {w} TO {r}; GRANT USAGE ON FOREIGN SERVER {srv} TO {r};
GRANT USAGE ON LANGUAGE plpgsql TO {r};
GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text) TO {r};
CREATE TABLE {s}.owned (x int); ALTER TABLE {s}.owned OWNER TO {o};
CREATE FUNCTION {s}.owned_f() RETURNS int LANGUAGE sql AS 'SELECT 2';
ALTER FUNCTION {s}.owned_f() OWNER TO {o};
"""


def run(pg: Postgres, text: str, **names: str) -> None:
    pg.execute(sql.SQL(text).format(**{k: sql.Identifier(v) for k, v in names.items()}))


@pytest.fixture
def wrapper(pg: Postgres, roles: Roles) -> Iterator[tuple[str, str]]:
    w, srv = roles.name("fdw"), roles.name("srv")
    yield w, srv
    run(pg, "DROP FOREIGN DATA WRAPPER IF EXISTS {w} CASCADE", w=w)


def oids_of(pg: Postgres, *names: str) -> list[int]:
    found = pg.execute("SELECT oid FROM pg_roles WHERE rolname = ANY(%s)", [list(names)])
    return sorted(int(r[0]) for r in found)


async def rows(pg: Postgres, oids: list[int], whole: bool) -> list[catalog.RawGrant]:
    async with await psycopg.AsyncConnection.connect(pg.dsn, autocommit=True) as conn:
        return sorted((await catalog.database_rows(conn, oids, whole=whole)).grants, key=repr)


async def test_scoped_object_rows_are_the_whole_scans(
    pg: Postgres, roles: Roles, schema: str, wrapper: tuple[str, str]
) -> None:
    r, o = roles.role("r"), roles.role("o")
    lo = int(pg.execute("SELECT lo_create(0)")[0][0])
    try:
        run(pg, _GRANTS, s=schema, r=r, o=o, w=wrapper[0], srv=wrapper[1])
        grant_lo = sql.SQL("GRANT SELECT ON LARGE OBJECT {} TO {}")
        pg.execute(grant_lo.format(sql.Literal(lo), sql.Identifier(r)))
        oids = oids_of(pg, r, o)
        assert min(oids) >= rpg.FIRST_NORMAL_OID
        scoped, whole = await rows(pg, oids, False), await rows(pg, oids, True)
        assert scoped == whole
        kinds = {g.kind for g in scoped}
        assert kinds >= {
            "table", "column", "view", "sequence", "function", "procedure", "domain", "type",
            "schema", "language", "foreign-data wrapper", "foreign server", "large object",
        }  # fmt: skip
        assert any(g.name.startswith("pg_ls_dir(") for g in scoped)  # a grant on a system object
        assert {g.name for g in scoped if g.owner in oids} >= {"owned", "owned_f()"}
    finally:
        pg.execute("SELECT lo_unlink(%s)", [lo])


@pytest.mark.parametrize(
    "grant",
    [
        "GRANT SELECT ON {s}.t TO {r} WITH GRANT OPTION",
        "GRANT SELECT (a) ON {s}.t TO {r} WITH GRANT OPTION",
        "GRANT EXECUTE ON FUNCTION {s}.f() TO {r} WITH GRANT OPTION",
        "GRANT USAGE ON TYPE {s}.e TO {r} WITH GRANT OPTION",
        "GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text) TO {r} WITH GRANT OPTION",
    ],
    ids=["table", "column", "function", "type", "system-function"],
)
async def test_grant_options_are_found_by_the_scoped_check(
    pg: Postgres, roles: Roles, schema: str, grant: str
) -> None:
    r = roles.role("r")
    run(pg, "CREATE TABLE {s}.t (a int); CREATE FUNCTION {s}.f() RETURNS int LANGUAGE sql AS 'SELECT 1'; "
        "CREATE TYPE {s}.e AS ENUM ('x')", s=schema)  # fmt: skip
    run(pg, grant, s=schema, r=r)
    async with await psycopg.AsyncConnection.connect(pg.dsn, autocommit=True) as conn:
        with pytest.raises(DangerousRole, match="WITH GRANT OPTION"):
            await rpg.assert_safe_role(conn, r, exempt=False)


async def test_grants_to_a_pinned_predefined_role_are_still_seen(
    pg: Postgres, roles: Roles, schema: str
) -> None:
    """pg_shdepend has no rows for pg_monitor: a closure with it is read by the whole scan."""
    r = roles.role("r")
    run(pg, "CREATE TABLE {s}.metrics (x int); GRANT SELECT ON {s}.metrics TO pg_monitor; "
        "GRANT pg_monitor TO {r}", s=schema, r=r)  # fmt: skip
    try:
        async with await psycopg.AsyncConnection.connect(pg.dsn, autocommit=True) as conn:
            p = await ex.explain(conn, r, connect=None)
        seen = [g for g in p.grants if g.name == "metrics"]
        assert [(g.privilege, g.holders) for g in seen] == [("SELECT", ["pg_monitor"])]
    finally:
        run(pg, "REVOKE SELECT ON {s}.metrics FROM pg_monitor", s=schema)


async def test_a_database_owner_gets_what_pg_database_owner_holds(pg: Postgres, roles: Roles) -> None:
    """Only a closure that owns a database reads pg_database_owner's grants; it still sees them."""
    owner, stranger = roles.role("owner"), roles.role("stranger")
    name = roles.name("db")
    run(pg, "CREATE DATABASE {d} OWNER {o}", d=name, o=owner)
    try:
        dsn = psycopg.conninfo.make_conninfo(pg.dsn, dbname=name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE owners_only (x int); GRANT SELECT ON owners_only TO pg_database_owner")
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            mine = await ex.explain(conn, owner, connect=None)
            theirs = await ex.explain(conn, stranger, connect=None)
        assert [(g.privilege, g.holders) for g in mine.grants if g.name == "owners_only"] == [
            ("SELECT", ["pg_database_owner"])
        ]
        assert not [g for g in theirs.grants if g.name == "owners_only"]
    finally:
        run(pg, "DROP DATABASE {d} WITH (FORCE)", d=name)
