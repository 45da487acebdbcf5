"""What the check and the grant's catalog reads cost as a database grows: a table.

    .venv/bin/python bench/catalog_scale.py [--tables 0,5000,20000] [--dsn DSN]

Why it exists: every request's check and every GRANT read the role's privileges and its
grant options from the catalogs (#11, #16). Read by a scan of pg_class, pg_attribute and
pg_proc, that cost grows with the database, not with the role: the approvers' card and the
approve click of a small role on a large database paid for every table in it. The reads
now keep to the objects pg_shdepend names the role on (rolecall.pg.acl_scope). This times
both ways, on the same role and database, at growing numbers of tables (10 columns each,
each granted to another role, so that every table and many columns carry an ACL).

A benchmark, not a test: it asserts nothing and CI does not run it (tests/test_catalog_scope.py
holds the scoped reads to the whole scans' answers). PostgreSQL is the embedded 16
(pgserver) unless --dsn names another server; it creates a scratch database and drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rolecall import explain as ex  # noqa: E402
from rolecall import pg as rpg  # noqa: E402
from rolecall.privileges import catalog  # noqa: E402

Conn = psycopg.AsyncConnection[tuple[object, ...]]
REPEAT = 15


def _grow(dsn: str, have: int, want: int, other: str) -> None:
    """Tables `have`..`want`-1, each with 10 columns, a table grant and a column grant to `other`."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(have, want, 250):
            stmts = []
            for j in range(i, min(i + 250, want)):
                t = sql.Identifier(f"t{j:06d}")
                stmts.append(
                    sql.SQL(
                        "CREATE TABLE {t} (a int, b int, c text, d text, e int, f int, g int, h int, "
                        "i int, j int);"
                        "GRANT SELECT ON {t} TO {o}; GRANT UPDATE (b) ON {t} TO {o};"
                    ).format(t=t, o=sql.Identifier(other))
                )
            conn.execute(sql.SQL("BEGIN;") + sql.Composed(stmts) + sql.SQL("COMMIT;"))


async def _median_ms(fn: Callable[[], Awaitable[Any]]) -> float:
    await fn()  # warm the catalog caches of this backend
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


async def _row(conn: Conn, role: str, tables: int) -> list[str]:
    oids = await rpg.contained_oids(conn, role)

    async def grant_options(whole: bool) -> None:
        query = rpg._GRANT_OPTIONS.format(**rpg.acl_scope(oids, whole=whole))
        await (await conn.execute(query, {"oids": oids})).fetchall()

    async def objects(whole: bool) -> None:
        await catalog.database_rows(conn, oids, whole=whole)

    cells = [f"{tables:,}"]
    for fn in (grant_options, objects):
        for whole in (True, False):
            cells.append(f"{await _median_ms(lambda: fn(whole)):.1f}")  # noqa: B023
    cells.append(f"{await _median_ms(lambda: rpg.assert_safe_role(conn, role, exempt=False)):.1f}")
    cells.append(f"{await _median_ms(lambda: ex.explain(conn, role, connect=None)):.1f}")
    return cells


async def _measure(dsn: str, counts: list[int]) -> list[list[str]]:
    role, other = f"cs_{uuid.uuid4().hex[:6]}", f"cs_{uuid.uuid4().hex[:6]}_other"
    out: list[list[str]] = []
    with psycopg.connect(dsn, autocommit=True) as admin:
        for name in (role, other):
            admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
    have = 0
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:  # the role's own few grants
            conn.execute(
                sql.SQL(
                    "CREATE TABLE cs_mine (a int, b int); GRANT SELECT ON cs_mine TO {r}; "
                    "GRANT SELECT (a) ON cs_mine TO {r}; CREATE FUNCTION cs_f() RETURNS int "
                    "LANGUAGE sql AS 'SELECT 1'; GRANT EXECUTE ON FUNCTION cs_f() TO {r}"
                ).format(r=sql.Identifier(role))
            )
        for n in counts:
            started = time.monotonic()
            _grow(dsn, have, n, other)
            have = n
            print(f"[catalog] {n:,} tables ready ({time.monotonic() - started:.0f}s)", flush=True)
            # As rolecall opens its own (rolecall.pg.open_dsn): no server-side prepared plans.
            async with await rpg.open_dsn(dsn, connect_timeout=5, application_name="catalog_scale") as conn:
                out.append(await _row(conn, role, n))
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            for name in (role, other):
                admin.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(name)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", default="0,5000,20000", help="comma-separated numbers of tables")
    p.add_argument("--dsn", help="a PostgreSQL server to use (a scratch database is created in it)")
    args = p.parse_args()
    counts = sorted(int(x) for x in args.tables.split(","))
    server = None
    dsn = args.dsn
    if dsn is None:
        import tempfile

        import pgserver

        server = pgserver.get_server(Path(tempfile.mkdtemp()) / "pg", cleanup_mode="delete")
        dsn = str(server.get_uri())
    scratch = f"catalog_scale_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
        version = admin.info.server_version
    try:
        rows = asyncio.run(_measure(make_conninfo(dsn, dbname=scratch), counts))
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(scratch)))
        if server is not None:
            server.cleanup()
    print(f"\nPostgreSQL {version}; a role with 3 grants of its own; medians of {REPEAT} runs, ms\n")
    print("| tables | grant options: whole scan | scoped | objects: whole scan | scoped "
          "| the check's safety rules (scoped) | explain (scoped) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
