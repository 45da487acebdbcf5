"""The catalog queries behind `explain`: all of them plain SELECTs on world-readable catalogs.

Nothing here needs more than a login with CONNECT (checked on 15 and 16 with the
least-privilege login `rolecall setup-sql` prints). Names only ever reach SQL as bound
parameters; role names are compared as text so that a name over 63 bytes cannot match
its truncated twin.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from rolecall.pg import Conn, Read, Row, acl_scope, read_all
from rolecall.privileges.graph import Edge, RoleInfo

# Every membership edge reachable from the start roles, one row per (member, role): on 16 a
# row per grantor exists, and any of them with INHERIT (or SET) is enough.
_REACH = sql.SQL("""
WITH RECURSIVE reach(oid) AS (
    SELECT oid FROM pg_roles WHERE rolname::text = ANY(%(names)s)
  UNION
    SELECT m.roleid FROM pg_auth_members m JOIN reach ON m.member = reach.oid
)
""")
_EDGES = """{reach}SELECT m.member, m.roleid, {inherit}, {set}, bool_or(m.admin_option)
FROM pg_auth_members m JOIN pg_roles mr ON mr.oid = m.member
WHERE m.member IN (SELECT oid FROM reach)
GROUP BY m.member, m.roleid
"""
_EDGE_OPTIONS_16 = (sql.SQL("bool_or(m.inherit_option)"), sql.SQL("bool_or(m.set_option)"))
_EDGE_OPTIONS_15 = (sql.SQL("bool_or(mr.rolinherit)"), sql.SQL("true"))

# The roles of those edges: every one of them is in `reach`, and every role in `reach` is a
# start role or the role of an edge, so this reads them in the same round trip as the edges.
_ROLES = sql.SQL(
    """{reach}SELECT oid, rolname::text, rolsuper, rolcreaterole, rolbypassrls, rolreplication, rolcanlogin,
       rolcreatedb, rolinherit
FROM pg_roles WHERE oid IN (SELECT oid FROM reach)
"""
).format(reach=_REACH)

# ACLs that live in every database. A NULL ACL means the built-in default (acldefault), which
# only matters to the owner here: PUBLIC's share is left out anyway. The large catalogs are
# read only where pg_shdepend names one of the roles (rolecall.pg.acl_scope).
_OBJECTS = sql.SQL(
    """{deps}SELECT a.grantee, o.kind, o.nsp, o.name, o.col, a.privilege_type, a.is_grantable, o.owner,
       o.secdef, o.rls, o.forced
FROM (
    SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table' ELSE 'table' END AS kind,
           n.nspname::text AS nsp, c.relname::text AS name, ''::text AS col,
           coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char",
                                         c.relowner)) AS acl,
           c.relowner AS owner, false AS secdef, c.relrowsecurity AS rls, c.relforcerowsecurity AS forced
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
      AND (c.relacl IS NOT NULL OR c.relowner = ANY(%(oids)s::oid[])) {only_class}
  UNION ALL
    SELECT 'column', n.nspname::text, c.relname::text, at.attname::text, at.attacl, c.relowner, false,
           c.relrowsecurity, c.relforcerowsecurity
    FROM pg_attribute at JOIN pg_class c ON c.oid = at.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE at.attacl IS NOT NULL AND at.attnum > 0 AND NOT at.attisdropped {only_columns}
  UNION ALL
    SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate'
                WHEN 'w' THEN 'window function' ELSE 'function' END,
           n.nspname::text, p.proname::text || '(' || pg_get_function_identity_arguments(p.oid) || ')', '',
           coalesce(p.proacl, acldefault('f', p.proowner)), p.proowner, p.prosecdef, false, false
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE (p.proacl IS NOT NULL OR p.proowner = ANY(%(oids)s::oid[])) {only_proc}
  UNION ALL
    SELECT 'schema', n.nspname::text, n.nspname::text, '', coalesce(n.nspacl, acldefault('n', n.nspowner)),
           n.nspowner, false, false, false
    FROM pg_namespace n WHERE n.nspacl IS NOT NULL OR n.nspowner = ANY(%(oids)s::oid[])
  UNION ALL
    SELECT CASE t.typtype WHEN 'd' THEN 'domain' ELSE 'type' END, n.nspname::text, t.typname::text, '',
           coalesce(t.typacl, acldefault('T', t.typowner)), t.typowner, false, false, false
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE (t.typacl IS NOT NULL OR t.typowner = ANY(%(oids)s::oid[])) {only_type}
      AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)
      AND (t.typrelid = 0 OR EXISTS (SELECT 1 FROM pg_class r WHERE r.oid = t.typrelid AND r.relkind = 'c'))
  UNION ALL
    SELECT 'language', '', l.lanname::text, '', coalesce(l.lanacl, acldefault('l', l.lanowner)),
           l.lanowner, false, false, false
    FROM pg_language l WHERE l.lanacl IS NOT NULL OR l.lanowner = ANY(%(oids)s::oid[])
  UNION ALL
    SELECT 'foreign-data wrapper', '', w.fdwname::text, '', coalesce(w.fdwacl, acldefault('F', w.fdwowner)),
           w.fdwowner, false, false, false
    FROM pg_foreign_data_wrapper w WHERE w.fdwacl IS NOT NULL OR w.fdwowner = ANY(%(oids)s::oid[])
  UNION ALL
    SELECT 'foreign server', '', s.srvname::text, '', coalesce(s.srvacl, acldefault('S', s.srvowner)),
           s.srvowner, false, false, false
    FROM pg_foreign_server s WHERE s.srvacl IS NOT NULL OR s.srvowner = ANY(%(oids)s::oid[])
  UNION ALL
    SELECT 'large object', '', lo.oid::text, '', coalesce(lo.lomacl, acldefault('L', lo.lomowner)),
           lo.lomowner, false, false, false
    FROM pg_largeobject_metadata lo
    WHERE (lo.lomacl IS NOT NULL OR lo.lomowner = ANY(%(oids)s::oid[])) {only_lo}
) o, aclexplode(o.acl) a
WHERE a.grantee = ANY(%(oids)s::oid[])
"""
)

# Shared catalogs: the same answer from any database.
_SHARED = """
SELECT a.grantee, o.kind, o.db, o.name, a.privilege_type, a.is_grantable, o.owner
FROM (
    SELECT 'database' AS kind, d.datname::text AS db, d.datname::text AS name,
           coalesce(d.datacl, acldefault('d', d.datdba)) AS acl, d.datdba AS owner
    FROM pg_database d WHERE d.datacl IS NOT NULL OR d.datdba = ANY(%(oids)s::oid[])
  UNION ALL
    SELECT 'tablespace', '', t.spcname::text, coalesce(t.spcacl, acldefault('t', t.spcowner)), t.spcowner
    FROM pg_tablespace t WHERE t.spcacl IS NOT NULL OR t.spcowner = ANY(%(oids)s::oid[])
  {parameters}
) o, aclexplode(o.acl) a
WHERE a.grantee = ANY(%(oids)s::oid[])
"""
_PARAMETERS = sql.SQL(
    "UNION ALL SELECT 'parameter', '', p.parname::text, p.paracl, 0::oid FROM pg_parameter_acl p"
)

_DEFAULTS = """
SELECT d.defaclrole, pg_get_userbyid(d.defaclrole)::text, coalesce(n.nspname::text, ''),
       d.defaclobjtype::text, a.grantee,
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END,
       a.privilege_type, a.is_grantable
FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a
WHERE (d.defaclrole = ANY(%(oids)s::oid[]) OR a.grantee = ANY(%(oids)s::oid[])) AND a.grantee <> d.defaclrole
"""

_POLICIES = """
SELECT n.nspname::text, c.relname::text, p.polname::text, p.polroles::oid[]
FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relrowsecurity AND p.polroles && %(oids)s::oid[]
"""

_DATABASES = """
SELECT d.datname::text, d.datallowconn, d.datistemplate, has_database_privilege(d.oid, 'CONNECT'), d.datdba,
       d.datname = current_database(), current_user::text
FROM pg_database d ORDER BY d.datname
"""

_OWNED = """
SELECT r.rolname::text, coalesce(d.datname::text, ''), count(*),
       min(CASE WHEN s.dbid IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
           THEN (pg_identify_object(s.classid, s.objid, s.objsubid)).type || ' '
                || (pg_identify_object(s.classid, s.objid, s.objsubid)).identity END)
FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid LEFT JOIN pg_database d ON d.oid = s.dbid
WHERE s.refclassid = 'pg_authid'::regclass AND s.deptype = 'o' AND s.refobjid = ANY(%(oids)s::oid[])
GROUP BY 1, 2 ORDER BY 1, 2
"""


@dataclass(frozen=True)
class RawGrant:
    grantee: int
    kind: str
    schema_name: str
    name: str
    column: str
    privilege: str
    grantable: bool
    owner: int
    security_definer: bool = False
    rls: bool = False
    forced: bool = False


@dataclass(frozen=True)
class RawDefault:
    creator: int
    creator_name: str
    schema_name: str
    objtype: str
    grantee: int
    grantee_name: str
    privilege: str
    grantable: bool


@dataclass(frozen=True)
class RawPolicy:
    schema_name: str
    table: str
    name: str
    roles: tuple[int, ...]


@dataclass(frozen=True)
class Database:
    name: str
    allow_connections: bool
    template: bool
    can_connect: bool
    owner: int
    current: bool


@dataclass
class DatabaseRows:
    grants: list[RawGrant]
    defaults: list[RawDefault]
    policies: list[RawPolicy]


def _i(value: object) -> int:
    return int(str(value))


def graph_reads(version: int, names: list[str]) -> list[Read]:
    """The membership edges reachable from `names`, and those roles: one round trip."""
    inherit, set_ = _EDGE_OPTIONS_16 if version >= 160000 else _EDGE_OPTIONS_15
    return [
        (sql.SQL(_EDGES).format(reach=_REACH, inherit=inherit, set=set_), {"names": names}),
        (_ROLES, {"names": names}),
    ]


def parse_edges(rows: list[Row]) -> list[Edge]:
    return [
        Edge(member=_i(m), role=_i(r), inherit=bool(i), set_role=bool(s), admin=bool(a))
        for m, r, i, s, a in rows
    ]


def parse_roles(rows: list[Row]) -> dict[int, RoleInfo]:
    out = {}
    for oid, name, *flags in rows:
        su, cr, bypass, repl, login, createdb, inherit = (bool(f) for f in flags)
        out[_i(oid)] = RoleInfo(_i(oid), str(name), su, cr, bypass, repl, login, createdb, inherit)
    return out


# Reads explain sends together (rolecall.pg.read_all): each is a statement and its parameters,
# and a parser of its rows, so that reads that do not depend on each other share a round trip.
DATABASES: Read = (_DATABASES, None)
LO_COMPAT: Read = ("SELECT current_setting('lo_compat_privileges')::bool", None)


def parse_databases(rows: list[Row]) -> tuple[list[Database], str]:
    """Every database of the cluster, and the admin login's name."""
    user = str(rows[0][6]) if rows else ""
    return [
        Database(str(n), bool(allow), bool(tmpl), bool(can), _i(owner), bool(cur_))
        for n, allow, tmpl, can, owner, cur_, _ in rows
    ], user


def shared_grants_read(version: int, oids: list[int]) -> Read:
    """Grants on databases, tablespaces and parameters, with the database they concern."""
    parameters = _PARAMETERS if version >= 150000 else sql.SQL("")
    return sql.SQL(_SHARED).format(parameters=parameters), {"oids": oids}


def parse_shared_grants(rows: list[Row]) -> list[tuple[str, RawGrant]]:
    return [
        (str(db), RawGrant(_i(g), str(kind), "", str(name), "", str(p), bool(gr), _i(owner)))
        for g, kind, db, name, p, gr, owner in rows
    ]


def owned_read(oids: list[int]) -> Read:
    """(owner, database or "" for shared objects, count, one of them when it can be named here)
    from the cluster-wide pg_shdepend."""
    return _OWNED, {"oids": oids}


def parse_owned(rows: list[Row]) -> list[tuple[str, str, int, str]]:
    return [(str(r), str(d), _i(n), str(x or "")) for r, d, n, x in rows]


def database_reads(oids: list[int], whole: bool = False) -> list[Read]:
    """The grants, default privileges and RLS policies of one database that concern `oids`.

    `whole` scans the whole catalogs instead of pg_shdepend's objects (the same answer, slower;
    the tests compare the two).
    """
    return [
        (_OBJECTS.format(**acl_scope(oids, whole)), {"oids": oids}),
        (_DEFAULTS, {"oids": oids}),
        (_POLICIES, {"oids": [0, *oids]}),
    ]


def parse_database_rows(objects: list[Row], defaults: list[Row], policies: list[Row]) -> DatabaseRows:
    grants = [
        RawGrant(_i(g), str(k), str(s), str(n), str(c), str(p), bool(gr), _i(o), bool(sd), bool(r), bool(f))
        for g, k, s, n, c, p, gr, o, sd, r, f in objects
    ]
    default_rows = [
        RawDefault(_i(c), str(cn), str(s), str(t), _i(g), str(gn), str(p), bool(gr))
        for c, cn, s, t, g, gn, p, gr in defaults
    ]
    policy_rows = [
        RawPolicy(str(s), str(t), str(n), tuple(_i(r) for r in rs))  # type: ignore[attr-defined]
        for s, t, n, rs in policies
    ]
    return DatabaseRows(grants, default_rows, policy_rows)


async def database_rows(conn: Conn, oids: list[int], whole: bool = False) -> DatabaseRows:
    """`database_reads` in one round trip, parsed."""
    objects, defaults, policies = await read_all(conn, *database_reads(oids, whole))
    return parse_database_rows(objects, defaults, policies)
