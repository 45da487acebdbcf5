"""The SQL that the activities, doctor and setup-sql share: what makes a role safe to lend.

Contract: pure functions over an open psycopg connection; no config, no Temporal. Names reach
SQL only as bound parameters. A refusal is a `DangerousRole` or `BadRequest` whose message a
person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from rolecall.errors import BadRequest, DangerousRole

# Every role the target contains, directly or not: a member can reach all of them.
_CONTAINED = """
WITH RECURSIVE up(oid, path) AS (
    SELECT r.oid, ARRAY[r.rolname::text] FROM pg_roles r WHERE r.rolname = %(role)s
  UNION
    SELECT m.roleid, up.path || r.rolname::text
    FROM pg_auth_members m
    JOIN up ON m.member = up.oid
    JOIN pg_roles r ON r.oid = m.roleid
    WHERE NOT r.rolname::text = ANY(up.path)
)
SELECT DISTINCT ON (r.oid) r.oid, r.rolname, up.path, r.rolsuper, r.rolcreaterole,
       r.rolbypassrls, r.rolreplication, r.rolcanlogin
FROM up JOIN pg_roles r ON r.oid = up.oid
ORDER BY r.oid, array_length(up.path, 1)
"""

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

# Privileges held WITH GRANT OPTION (in this database, plus cluster-wide objects).
_GRANT_OPTIONS = """
SELECT r.rolname, g.kind, g.name, g.privilege FROM (
    SELECT a.grantee, c.relkind::text AS kind, c.oid::regclass::text AS name, a.privilege_type AS privilege
      FROM pg_class c, aclexplode(c.relacl) a WHERE a.is_grantable
  UNION ALL
    SELECT a.grantee, 'column', c.oid::regclass::text || '.' || quote_ident(at.attname), a.privilege_type
      FROM pg_attribute at JOIN pg_class c ON c.oid = at.attrelid, aclexplode(at.attacl) a
      WHERE a.is_grantable
  UNION ALL
    SELECT a.grantee, 'function', p.oid::regprocedure::text, a.privilege_type
      FROM pg_proc p, aclexplode(p.proacl) a WHERE a.is_grantable
  UNION ALL
    SELECT a.grantee, 'schema', quote_ident(n.nspname), a.privilege_type
      FROM pg_namespace n, aclexplode(n.nspacl) a WHERE a.is_grantable
  UNION ALL
    SELECT a.grantee, 'type', t.oid::regtype::text, a.privilege_type
      FROM pg_type t, aclexplode(t.typacl) a WHERE a.is_grantable
  UNION ALL
    SELECT a.grantee, 'database', quote_ident(d.datname), a.privilege_type
      FROM pg_database d, aclexplode(d.datacl) a WHERE a.is_grantable
  UNION ALL
    SELECT a.grantee, 'language', quote_ident(l.lanname), a.privilege_type
      FROM pg_language l, aclexplode(l.lanacl) a WHERE a.is_grantable
  UNION ALL
    SELECT a.grantee, 'tablespace', quote_ident(s.spcname), a.privilege_type
      FROM pg_tablespace s, aclexplode(s.spcacl) a WHERE a.is_grantable
  UNION ALL
    SELECT a.grantee, 'large object', l.oid::text, a.privilege_type
      FROM pg_largeobject_metadata l, aclexplode(l.lomacl) a WHERE a.is_grantable
  UNION ALL
    SELECT a.grantee, 'foreign server', quote_ident(f.srvname), a.privilege_type
      FROM pg_foreign_server f, aclexplode(f.srvacl) a WHERE a.is_grantable
  UNION ALL
    SELECT a.grantee, 'foreign-data wrapper', quote_ident(w.fdwname), a.privilege_type
      FROM pg_foreign_data_wrapper w, aclexplode(w.fdwacl) a WHERE a.is_grantable
  UNION ALL
    SELECT m.member, 'role', quote_ident(m.roleid::regrole::text), 'ADMIN OPTION'
      FROM pg_auth_members m WHERE m.admin_option
) g JOIN pg_roles r ON r.oid = g.grantee
WHERE g.grantee = ANY(%(oids)s)
LIMIT 1
"""

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


def _via(path: list[str]) -> str:
    """`through "a" -> "b"` when the risky role is not the requested one."""
    if len(path) <= 1:
        return ""
    return " (through " + " -> ".join(f'"{p}"' for p in path[1:]) + ")"


async def assert_safe_role(
    conn: psycopg.AsyncConnection[tuple[object, ...]], role: str, exempt: bool
) -> list[str]:
    """Refuse roles whose access would outlive a REVOKE; return warnings for exempt ones.

    Superuser-grade attributes, login roles and predefined roles are refused always. Owning
    objects or holding grant options lets a member give themselves lasting access, so those
    are refused unless the instance lists the role in `unsafe_allowed`.
    """
    cur = await conn.execute(_CONTAINED, {"role": role})
    rows = await cur.fetchall()
    oids = []
    for oid, name_, path_, *flags in rows:
        oids.append(oid)
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
    warnings: list[str] = []
    cur = await conn.execute(_OWNED, {"oids": oids})
    owned = await cur.fetchone()
    if owned:
        owner, here, datname, kind, identity = owned
        what = f"{kind} {identity}" if here else f"objects in database {datname}"
        if datname is None:
            what = f"{kind} {identity}"
        msg = f'role "{owner}" owns {what}: members could grant themselves lasting access'
        if not exempt:
            raise DangerousRole(msg)
        warnings.append(msg)
    cur = await conn.execute(_GRANT_OPTIONS, {"oids": oids})
    grantable = await cur.fetchone()
    if grantable:
        holder, kind_, obj, privilege = grantable
        kind = _RELKINDS.get(str(kind_), str(kind_))
        msg = (
            f'role "{holder}" holds {privilege} on {kind} {obj} WITH GRANT OPTION: '
            "members could grant themselves lasting access"
        )
        if privilege == "ADMIN OPTION":
            msg = (
                f'role "{holder}" holds ADMIN OPTION on role {obj}: '
                "members could grant themselves lasting access"
            )
        if not exempt:
            raise DangerousRole(msg)
        warnings.append(msg)
    return warnings
