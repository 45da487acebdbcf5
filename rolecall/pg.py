"""The SQL that the activities, doctor and setup-sql share: connecting, and what is safe to lend.

Contract: functions over an open psycopg connection plus the one way to open one; no config
file, no Temporal. Names reach SQL only as bound parameters or `sql.Identifier`/`sql.Literal`.
A refusal is a `DangerousRole` or `BadRequest` whose message a person can act on; a server
that cannot be reached is `InstanceUnavailable` (retryable).
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg
from psycopg import sql
from psycopg.abc import Params
from psycopg.conninfo import make_conninfo

from rolecall.errors import BadRequest, ConfigError, DangerousRole, InstanceUnavailable, LoginNotFound
from rolecall.models import Target

Conn = psycopg.AsyncConnection[tuple[object, ...]]
Row = tuple[object, ...]
# One read: a statement and its parameters.
Read = tuple[str | sql.SQL | sql.Composed, "Params | None"]

# Reused connections: one idle connection is kept per slot, for at most this long. Past a
# short idle time a reused connection is pinged first, so a restarted server costs nothing.
_IDLE_MAX = 300.0
_PING_AFTER = 2.0


@dataclass
class _Slots:
    """At most `size` connections to one instance from this process: in use plus idle."""

    size: int
    limit: asyncio.Semaphore
    idle: list[tuple[float, Conn]] = field(default_factory=list)


# Per event loop (the CLI runs its own), per instance and DSN.
_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], _Slots]] = (
    weakref.WeakKeyDictionary()
)


def dsn_of(target: Target) -> str:
    value = os.environ.get(target.dsn_env)
    if not value:
        raise ConfigError(
            f"instance {target.instance!r}: environment variable {target.dsn_env} (its admin DSN) is not set"
        )
    return value


def _ms(value: timedelta) -> int:
    return max(1, int(value.total_seconds() * 1000))


async def open_dsn(dsn: str, *, connect_timeout: int, application_name: str, options: str = "") -> Conn:
    """One new autocommit connection; psycopg's errors pass through.

    Every connection rolecall opens starts here. Grants, revokes, checks and doctor use
    `connect()` (per-instance budget, lock and statement timeouts); this is for reads that
    have a DSN and want psycopg's own errors: explain (its other databases are read with the
    same DSN) and the Slack app's role list.
    """
    # Never a server-side prepared statement: the catalog reads' plans depend on the role's
    # OIDs (a generic plan scans the catalogs the role-scoped reads avoid: 7 ms instead of
    # 0.6 ms at 20,000 tables), and a pooler in transaction mode (PgBouncer) may hand the
    # next statement to a session that never prepared it.
    if options:
        conn = await psycopg.AsyncConnection.connect(
            dsn,
            autocommit=True,
            connect_timeout=connect_timeout,
            application_name=application_name,
            options=options,
        )
    else:
        conn = await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, connect_timeout=connect_timeout, application_name=application_name
        )
    conn.prepare_threshold = None
    return conn


async def read_all(conn: Conn, *reads: Read) -> list[list[Row]]:
    """Several reads that do not depend on each other, sent together: one round trip.

    psycopg's pipeline mode; each read's rows come back in order. Only for reads: statements
    between two syncs run as one implicit transaction, so a failing one aborts the rest (they
    raise, nothing is half-read). PgBouncer passes it through: it is the ordinary extended
    protocol. The grant activity alone went from 16-18 ms to 13-14 ms (bench/README.md).
    """
    if len(reads) == 1:
        cur = await conn.execute(*reads[0])
        return [await cur.fetchall()]
    async with conn.pipeline():
        curs = [await conn.execute(query, params) for query, params in reads]
        return [await cur.fetchall() for cur in curs]


async def _open(target: Target, dsn: str, application_name: str) -> Conn:
    # No parallel workers for rolecall's catalog reads: on a primary they would be backends
    # beyond the connection budget, taken from the application's share of parallelism.
    options = (
        f"-c lock_timeout={_ms(target.lock_timeout)} -c statement_timeout={_ms(target.statement_timeout)}"
        " -c max_parallel_workers_per_gather=0"
    )
    try:
        return await open_dsn(
            dsn, connect_timeout=target.connect_timeout, application_name=application_name, options=options
        )
    except psycopg.OperationalError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InstanceUnavailable(f"cannot connect to instance {target.instance!r}: {first_line}") from e


async def _reusable(slots: _Slots) -> Conn | None:
    while slots.idle:
        since, conn = slots.idle.pop()
        idle = time.monotonic() - since
        if idle > _IDLE_MAX or conn.closed:
            await conn.close()
            continue
        if idle > _PING_AFTER:
            try:
                await conn.execute("SELECT 1")
            except psycopg.Error:
                await conn.close()
                continue
        return conn
    return None


@asynccontextmanager
async def connect(
    target: Target, application_name: str = "rolecall", dbname: str | None = None, reuse: bool = True
) -> AsyncIterator[Conn]:
    """The one way rolecall opens a connection to an instance.

    Every session sets lock_timeout and statement_timeout (a REVOKE that waits on a lock fails
    and is retried instead of queueing behind it on a production primary), and a process holds
    at most `max_connections` per instance, in use or idle: a mass expiry queues here, not on
    the server, and reuses its connections; a broken or mid-statement one is never reused.
    """
    dsn = dsn_of(target)
    if dbname:
        dsn = make_conninfo(dsn, dbname=dbname)
    if not reuse:
        conn = await _open(target, dsn, application_name)
        try:
            yield conn
        finally:
            await conn.close()
        return
    pools = _POOLS.setdefault(asyncio.get_running_loop(), {})
    slots = pools.get((target.instance, dsn))
    if slots is None or slots.size != target.max_connections:
        slots = pools[(target.instance, dsn)] = _Slots(
            target.max_connections, asyncio.Semaphore(target.max_connections)
        )
    async with slots.limit:
        conn = await _reusable(slots) or await _open(target, dsn, application_name)
        try:
            yield conn
        finally:
            # A failed statement (autocommit) leaves the session idle and reusable; only a
            # broken one, or one left mid-statement (cancelled), is closed. Closing and opening
            # again would briefly show one backend more than the budget on the server.
            if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await conn.close()
            else:
                slots.idle.append((time.monotonic(), conn))


async def close_idle() -> None:
    """Close this event loop's idle connections (worker shutdown)."""
    for slots in _POOLS.pop(asyncio.get_running_loop(), {}).values():
        while slots.idle:
            await slots.idle.pop()[1].close()


def grantor_oid(grantor: str | None) -> sql.Composable:
    """The grantor PostgreSQL records for rolecall's GRANTs, as an SQL expression.

    With a dedicated grantor (GRANTED BY) it is that role. Without one it is the admin login,
    except that 16+ records a superuser's grant as made by the bootstrap superuser (oid 10).
    """
    if grantor:
        return sql.SQL("(SELECT oid FROM pg_roles WHERE rolname = {})").format(sql.Literal(grantor))
    return sql.SQL(
        "(SELECT CASE WHEN rolsuper AND current_setting('server_version_num')::int >= 160000 "
        "THEN 10::oid ELSE oid END FROM pg_roles WHERE rolname = current_user)"
    )


# The login's own row: can it log in, and who is a member of it (a group role).
LOGIN_ROW = """SELECT r.rolcanlogin,
                  ARRAY(SELECT u.rolname::text FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member
                        WHERE m.roleid = r.oid ORDER BY 1 LIMIT 4)
           FROM pg_roles r WHERE r.rolname = %s"""


def judge_login(rows: list[Row], login: str, requester: str, instance: str) -> None:
    """The login a request maps to must be one person's: a LOGIN role that no one is a member of.

    A group role would hand the lent role to every member, and ending "its" sessions would end
    nobody's. `rows` are LOGIN_ROW's.
    """
    if not rows:
        raise LoginNotFound(
            f"database login {login!r} (for {requester}) does not exist on instance {instance!r}"
        )
    row = rows[0]
    can_login, members = bool(row[0]), [str(m) for m in row[1]]  # type: ignore[attr-defined]
    if members:
        shown = ", ".join(members[:3]) + (", ..." if len(members) > 3 else "")
        raise BadRequest(
            f"database login {login!r} (for {requester}) on instance {instance!r} is a group role with "
            f"members ({shown}): a grant to it would reach every member"
        )
    if not can_login:
        raise BadRequest(
            f"database login {login!r} (for {requester}) on instance {instance!r} is not a LOGIN role: "
            "rolecall lends roles to people's own logins"
        )


# The role and every role it is a member of, directly or not, with the path to each.
_CLOSURE = """
WITH RECURSIVE up(oid, path) AS (
    SELECT r.oid, ARRAY[r.rolname::text] FROM pg_roles r WHERE r.rolname = %(role)s
  UNION
    SELECT m.roleid, up.path || r.rolname::text
    FROM pg_auth_members m
    JOIN up ON m.member = up.oid
    JOIN pg_roles r ON r.oid = m.roleid
    WHERE NOT r.rolname::text = ANY(up.path)
)
"""
# Every role the target contains, directly or not: a member can reach all of them.
CONTAINED = (
    _CLOSURE
    + """SELECT DISTINCT ON (r.oid) r.oid, r.rolname, up.path, r.rolsuper, r.rolcreaterole,
       r.rolbypassrls, r.rolreplication, r.rolcanlogin
FROM up JOIN pg_roles r ON r.oid = up.oid
ORDER BY r.oid, array_length(up.path, 1)
"""
)

# Objects owned by any of the roles, in any database (pg_shdepend is cluster-wide).
_OWNED = """
SELECT r.rolname, d.datname = current_database() AS here, d.datname,
       (pg_identify_object(s.classid, s.objid, s.objsubid)).type,
       (pg_identify_object(s.classid, s.objid, s.objsubid)).identity
FROM pg_shdepend s
JOIN pg_roles r ON r.oid = s.refobjid
LEFT JOIN pg_database d ON d.oid = s.dbid
WHERE s.refclassid = 'pg_authid'::regclass AND s.deptype = 'o' AND s.refobjid = ANY(%(oids)s)
ORDER BY here DESC NULLS LAST
LIMIT 1
"""

# Only the objects whose ACL names one of the roles (or that one of them owns): pg_shdepend
# records both, per database, under an index on the role. Without it every check and every
# GRANT would scan the whole catalog (pg_class, pg_attribute, pg_proc ...), whose size is
# the database's, not the role's: the grant-option scan took 32 ms at 5,000 tables and
# 107 ms at 20,000, the scoped one 2-3 ms (bench/catalog_scale.py). Roles created by initdb (OIDs below
# FirstNormalObjectId) are pinned and get no pg_shdepend rows; a closure with one of them is
# read by the whole scan (`acl_scope`). The scan is also what the scoped query is tested
# against (tests/test_catalog_scope.py).
FIRST_NORMAL_OID = 16384
_ACL_DEPS = """WITH deps AS MATERIALIZED (
    SELECT classid, objid, objsubid FROM pg_shdepend
    WHERE refclassid = 'pg_authid'::regclass AND refobjid = ANY(%(oids)s::oid[]) AND deptype IN ('a', 'o')
      AND dbid IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
)
"""


_ONLY = {
    "only_class": "c.oid IN (SELECT objid FROM deps WHERE classid = 'pg_class'::regclass)",
    "only_columns": "(at.attrelid, at.attnum::int) IN "
    "(SELECT objid, objsubid FROM deps WHERE classid = 'pg_class'::regclass AND objsubid > 0)",
    "only_proc": "p.oid IN (SELECT objid FROM deps WHERE classid = 'pg_proc'::regclass)",
    "only_type": "t.oid IN (SELECT objid FROM deps WHERE classid = 'pg_type'::regclass)",
    "only_lo": "lo.oid IN (SELECT objid FROM deps WHERE classid = 'pg_largeobject'::regclass)",
}


def acl_scope(oids: list[int], whole: bool = False) -> dict[str, sql.Composable]:
    """A catalog query's `{deps}` and `{only_...}`: pg_shdepend's objects, or all of them.

    A plain `AND x IN (SELECT ... FROM deps)`, so that the planner makes each a join on the
    catalog's OID index; inside an `OR` it would stay a filter on a whole scan.
    """
    scoped = not whole and all(o >= FIRST_NORMAL_OID for o in oids)
    only = {name: sql.SQL("AND " + cond if scoped else "") for name, cond in _ONLY.items()}
    return {"deps": sql.SQL(_ACL_DEPS), **only}


# Privileges held WITH GRANT OPTION (in this database, plus cluster-wide objects). aclexplode
# of a NULL ACL yields no rows, so `acl IS NOT NULL` changes no answer; it keeps the function
# off most rows when the whole catalog is scanned.
_GRANT_OPTIONS = sql.SQL(
    """{deps}SELECT r.rolname, g.kind, g.name, g.privilege FROM (
    SELECT a.grantee, c.relkind::text AS kind, c.oid::regclass::text AS name, a.privilege_type AS privilege
      FROM pg_class c, aclexplode(c.relacl) a WHERE c.relacl IS NOT NULL AND a.is_grantable {only_class}
  UNION ALL
    SELECT a.grantee, 'column', c.oid::regclass::text || '.' || quote_ident(at.attname), a.privilege_type
      FROM pg_attribute at JOIN pg_class c ON c.oid = at.attrelid, aclexplode(at.attacl) a
      WHERE at.attacl IS NOT NULL AND a.is_grantable {only_columns}
  UNION ALL
    SELECT a.grantee, 'function', p.oid::regprocedure::text, a.privilege_type
      FROM pg_proc p, aclexplode(p.proacl) a WHERE p.proacl IS NOT NULL AND a.is_grantable {only_proc}
  UNION ALL
    SELECT a.grantee, 'schema', quote_ident(n.nspname), a.privilege_type
      FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspacl IS NOT NULL AND a.is_grantable
  UNION ALL
    SELECT a.grantee, 'type', t.oid::regtype::text, a.privilege_type
      FROM pg_type t, aclexplode(t.typacl) a WHERE t.typacl IS NOT NULL AND a.is_grantable {only_type}
  UNION ALL
    SELECT a.grantee, 'database', quote_ident(d.datname), a.privilege_type
      FROM pg_database d, aclexplode(d.datacl) a WHERE d.datacl IS NOT NULL AND a.is_grantable
  UNION ALL
    SELECT a.grantee, 'language', quote_ident(l.lanname), a.privilege_type
      FROM pg_language l, aclexplode(l.lanacl) a WHERE l.lanacl IS NOT NULL AND a.is_grantable
  UNION ALL
    SELECT a.grantee, 'tablespace', quote_ident(s.spcname), a.privilege_type
      FROM pg_tablespace s, aclexplode(s.spcacl) a WHERE s.spcacl IS NOT NULL AND a.is_grantable
  UNION ALL
    SELECT a.grantee, 'large object', lo.oid::text, a.privilege_type
      FROM pg_largeobject_metadata lo, aclexplode(lo.lomacl) a
      WHERE lo.lomacl IS NOT NULL AND a.is_grantable {only_lo}
  UNION ALL
    SELECT a.grantee, 'foreign server', quote_ident(f.srvname), a.privilege_type
      FROM pg_foreign_server f, aclexplode(f.srvacl) a WHERE f.srvacl IS NOT NULL AND a.is_grantable
  UNION ALL
    SELECT a.grantee, 'foreign-data wrapper', quote_ident(w.fdwname), a.privilege_type
      FROM pg_foreign_data_wrapper w, aclexplode(w.fdwacl) a WHERE w.fdwacl IS NOT NULL AND a.is_grantable
  UNION ALL
    SELECT m.member, 'role', quote_ident(m.roleid::regrole::text), 'ADMIN OPTION'
      FROM pg_auth_members m WHERE m.admin_option
) g JOIN pg_roles r ON r.oid = g.grantee
WHERE g.grantee = ANY(%(oids)s::oid[])
LIMIT 1
"""
)

_RELKINDS = {
    "r": "table",
    "p": "table",
    "v": "view",
    "m": "materialized view",
    "S": "sequence",
    "f": "foreign table",
}

_RISKY_ATTRS = [
    ("rolsuper", "SUPERUSER"),
    ("rolcreaterole", "CREATEROLE"),
    ("rolbypassrls", "BYPASSRLS"),
    ("rolreplication", "REPLICATION"),
]


# PostgreSQL truncates longer names silently (NAMEDATALEN - 1; 63 unless compiled otherwise):
# a name over it would address another role, so it is refused before it reaches SQL.
MAX_NAME_BYTES = 63


def check_name_length(name: str, what: str) -> None:
    if len(name.encode()) > MAX_NAME_BYTES:
        raise BadRequest(
            f"{what} {name!r} is longer than PostgreSQL's {MAX_NAME_BYTES}-byte limit for names "
            "(PostgreSQL would silently read it as another name)"
        )


@dataclass(frozen=True)
class _Role:
    oid: int
    name: str


# On 15 a member can SET ROLE to the lent role (and to every role it contains). Where one of
# them may create objects, the member can create objects it owns, and through them grant
# themselves access that outlives the revoke. 16 grants WITH SET FALSE, so this is 15's alone.
_CREATE_RIGHTS = """
SELECT r.rolname, x.what FROM (
    SELECT a.grantee, 'CREATE on schema ' || quote_ident(n.nspname) AS what
      FROM pg_namespace n, aclexplode(n.nspacl) a WHERE a.privilege_type = 'CREATE'
  UNION ALL
    SELECT a.grantee, 'CREATE on database ' || quote_ident(d.datname)
      FROM pg_database d, aclexplode(d.datacl) a WHERE a.privilege_type = 'CREATE'
  UNION ALL
    SELECT oid, 'CREATEDB' FROM pg_roles WHERE rolcreatedb
) x JOIN pg_roles r ON r.oid = x.grantee
WHERE x.grantee = ANY(%(oids)s)
ORDER BY 1, 2
LIMIT 1
"""

# What the roles own, named; objects in other databases can only be counted from here.
_OWNED_LIST_OF = """
SELECT CASE WHEN d.datname IS NULL OR d.datname = current_database()
            THEN (pg_identify_object(s.classid, s.objid, s.objsubid)).type || ' '
                 || (pg_identify_object(s.classid, s.objid, s.objsubid)).identity
            ELSE 'object ' || s.objid || ' (' || s.classid::regclass || ') in database '
                 || quote_ident(d.datname)
       END
FROM pg_shdepend s LEFT JOIN pg_database d ON d.oid = s.dbid
WHERE s.refclassid = 'pg_authid'::regclass AND s.deptype = 'o' AND s.refobjid = {owners}
ORDER BY 1
LIMIT 200
"""
_OWNED_LIST = _OWNED_LIST_OF.format(owners="ANY(%(oids)s)")
# The same list for a role named, its closure read in the same statement: one round trip.
_OWNED_LIST_BY_CLOSURE = _CLOSURE + _OWNED_LIST_OF.format(owners="ANY(ARRAY(SELECT oid FROM up))")


async def contained_oids(conn: Conn, role: str) -> list[int]:
    cur = await conn.execute(CONTAINED, {"role": role})
    return [int(str(row[0])) for row in await cur.fetchall()]


def owned_objects_read(role: str) -> Read:
    """`owned_objects` as one read, to send with others (`read_all`); rows of one column."""
    return (_OWNED_LIST_BY_CLOSURE, {"role": role})


async def owned_objects(conn: Conn, role: str, contained: list[int] | None = None) -> list[str]:
    """Objects owned by the role or a role it contains (at most 200, sorted).

    `contained`: the role's closure when the caller has just read it (the grant's safety check).
    """
    read = owned_objects_read(role) if contained is None else (_OWNED_LIST, {"oids": contained})
    (rows,) = await read_all(conn, read)
    return [str(row[0]) for row in rows]


def _via(path: list[str]) -> str:
    """`through "a" -> "b"` when the risky role is not the requested one."""
    if len(path) <= 1:
        return ""
    return " (through " + " -> ".join(f'"{p}"' for p in path[1:]) + ")"


@dataclass(frozen=True)
class SafeRole:
    """What the safety check found: warnings for an exempt role, and the roles it contains."""

    warnings: list[str]
    contained: list[int]


async def assert_safe_role(
    conn: psycopg.AsyncConnection[tuple[object, ...]], role: str, exempt: bool
) -> list[str]:
    """Refuse roles whose access would outlive a REVOKE; return warnings for exempt ones.

    Superuser-grade attributes, login roles and predefined roles are refused always. Owning
    objects or holding grant options lets a member give themselves lasting access, so those
    are refused unless the instance lists the role in `unsafe_allowed`.
    """
    (rows,) = await read_all(conn, (CONTAINED, {"role": role}))
    return (await safe_role(conn, role, exempt, rows)).warnings


async def safe_role(conn: Conn, role: str, exempt: bool, rows: list[Row]) -> SafeRole:
    """`assert_safe_role` on the role's closure already read (`rows`: CONTAINED's), so that a
    caller can send that read with its own; the rest is one more round trip."""
    oids: list[int] = []
    for oid, name_, path_, *flags in rows:
        oids.append(int(str(oid)))
        name, path = str(name_), [str(p) for p in path_]  # type: ignore[attr-defined]
        attrs = dict(
            zip(["rolsuper", "rolcreaterole", "rolbypassrls", "rolreplication"], flags[:4], strict=True)
        )
        for attr, label in _RISKY_ATTRS:
            if attrs[attr]:
                raise DangerousRole(f'role "{role}" is superuser-grade: "{name}"{_via(path)} has {label}')
        if flags[4]:
            raise DangerousRole(
                f'role "{role}" can log in as "{name}"{_via(path)}: '
                "login roles are people or services, not lendable roles"
            )
        if name.startswith("pg_"):
            raise DangerousRole(
                f'role "{role}" is or contains the predefined role "{name}"{_via(path)}, which is never lent'
            )
    reads: list[Read] = [(_OWNED, {"oids": oids}), (_GRANT_OPTIONS.format(**acl_scope(oids)), {"oids": oids})]
    if conn.info.server_version < 160000:
        reads.append((_CREATE_RIGHTS, {"oids": oids}))
    results = await read_all(conn, *reads)
    owned, grantable = results[0], results[1]
    creates = results[2] if len(results) > 2 else []
    warnings: list[str] = []

    def unsafe(msg: str) -> None:
        if not exempt:
            raise DangerousRole(msg)
        warnings.append(msg)

    if owned:
        owner, here, datname, kind, identity = owned[0]
        what = f"{kind} {identity}" if here else f"objects in database {datname}"
        if datname is None:
            what = f"{kind} {identity}"
        unsafe(f'role "{owner}" owns {what}: members could grant themselves lasting access')
    if grantable:
        holder, kind_, obj, privilege = grantable[0]
        kind = _RELKINDS.get(str(kind_), str(kind_))
        if privilege == "ADMIN OPTION":
            unsafe(
                f'role "{holder}" holds ADMIN OPTION on role {obj}: '
                "members could grant themselves lasting access"
            )
        else:
            unsafe(
                f'role "{holder}" holds {privilege} on {kind} {obj} WITH GRANT OPTION: '
                "members could grant themselves lasting access"
            )
    # 16 grants WITH SET FALSE, so a member cannot create objects as the role: 15's alone.
    if creates:
        unsafe(
            f'role "{creates[0][0]}" has {creates[0][1]}: on PostgreSQL 15 a member can SET ROLE to it and '
            "create objects it owns, which outlive the revoke"
        )
    return SafeRole(warnings, oids)
