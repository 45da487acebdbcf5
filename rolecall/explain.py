"""What would a membership of role R actually let a login do? Read from the catalogs.

A pure library over a psycopg connection (no Temporal, no activities): the approvers'
Slack card shows `summary()`, the CLI `render_text()` or the JSON of `Privileges`, and a
drift check compares two snapshots with `diff()`.

Only privileges R adds count: PUBLIC's are everyone's already. Every database of the
cluster is read through its own short connection (`connector(dsn)`); a database that
cannot be read is listed with the reason, never guessed at. Role attributes are never
inherited (they need SET ROLE), predefined roles are; see rolecall/privileges/graph.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import make_conninfo

from rolecall.config import Instance
from rolecall.errors import BadRequest, InstanceUnavailable, NotFound
from rolecall.pg import Conn, open_dsn, read_all
from rolecall.privileges import catalog, predefined
from rolecall.privileges.catalog import Database, DatabaseRows, RawGrant
from rolecall.privileges.graph import Closure, Edge, RoleInfo, closure
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
    gained_grants,
)
from rolecall.privileges.render import render_text, summary

__all__ = ["Privileges", "connector", "diff", "explain", "explain_instance", "render_text", "summary"]

NOTE_SET_16 = (
    "rolecall grants the role WITH SET FALSE (16+): a grantee cannot SET ROLE to it or "
    "through it, so what needs SET ROLE (the SET ROLE only privileges, role attributes) "
    "stays out of its reach"
)
NOTE_SET_15 = (
    "PostgreSQL 15 has no SET option: a grantee can SET ROLE to every role of the closure, "
    "and then uses its privileges and attributes"
)
Connect = Callable[[str], AbstractAsyncContextManager[Conn]]
APP_NAME = "rolecall explain"
MAX_NAME_BYTES = 63
_PARALLEL = 4  # connections to other databases at a time
_OBJTYPES = {"r": "tables", "S": "sequences", "f": "functions", "T": "types", "n": "schemas"}
_RLS_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
_SET_ATTRIBUTES = {"SUPERUSER", "CREATEROLE", "BYPASSRLS", "REPLICATION", "CREATEDB"}  # used after SET ROLE


def connector(dsn: str, connect_timeout: int = 5) -> Connect:
    """Open connections to the other databases of the cluster with the same DSN."""

    @asynccontextmanager
    async def connect(dbname: str) -> AsyncIterator[Conn]:
        conn = await open_dsn(
            make_conninfo(dsn, dbname=dbname), connect_timeout=connect_timeout, application_name=APP_NAME
        )
        try:
            yield conn
        finally:
            await conn.close()

    return connect


async def explain_instance(
    instance: Instance, role: str, login: str | None = None, read_other_databases: bool = True
) -> Privileges:
    """`explain` with the instance's admin DSN: what the CLI and the Slack card use."""
    dsn = instance.dsn()
    try:
        conn = await open_dsn(dsn, connect_timeout=instance.connect_timeout, application_name=APP_NAME)
    except psycopg.OperationalError as e:
        raise InstanceUnavailable(f"cannot connect to instance {instance.name!r}: {_first_line(e)}") from e
    async with conn:
        return await explain(
            conn,
            role,
            login=login,
            connect=connector(dsn, instance.connect_timeout) if read_other_databases else None,
            unsafe_allowed=role in instance.unsafe_allowed,
            where=f"on instance {instance.name!r}",
        )


async def explain(
    conn: Conn,
    role: str,
    *,
    login: str | None = None,
    connect: Connect | None = None,
    unsafe_allowed: bool = False,
    where: str = "",
) -> Privileges:
    """What a membership of `role` lets a login do; with `login`, only what it adds to that login."""
    for name, what in [(role, "role"), (login, "login")]:
        if name is not None and len(name.encode()) > MAX_NAME_BYTES:
            raise BadRequest(
                f"{what} {name!r} is longer than PostgreSQL's {MAX_NAME_BYTES}-byte limit for names"
            )
    names = [role, "pg_database_owner"] + ([login] if login else [])
    edge_rows, role_rows = await read_all(conn, *catalog.graph_reads(conn.info.server_version, names))
    edges, infos = catalog.parse_edges(edge_rows), catalog.parse_roles(role_rows)
    by_name = {info.name: info for info in infos.values()}
    suffix = f" {where}" if where else ""
    if role not in by_name:
        raise NotFound(f"role {role!r} does not exist{suffix}")
    if login is not None and login not in by_name:
        raise NotFound(f"login {login!r} does not exist{suffix}")
    oid_names = {oid: info.name for oid, info in infos.items()}
    b = _Builder(
        infos=infos,
        edges=edges,
        role=closure(by_name[role].oid, edges, oid_names),
        login=closure(by_name[login].oid, edges, oid_names) if login else None,
        owner_role=by_name["pg_database_owner"].oid if "pg_database_owner" in by_name else -1,
        version=conn.info.server_version,
    )
    await b.read(conn, connect)
    return b.build(role, login or "", unsafe_allowed)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@dataclass
class _Builder:
    infos: dict[int, RoleInfo]
    edges: list[Edge]
    role: Closure
    login: Closure | None
    owner_role: int  # pg_database_owner: every owner of a database is implicitly in it there
    version: int

    def __post_init__(self) -> None:
        self.raw: list[tuple[str, RawGrant]] = []
        self.defaults: list[tuple[str, catalog.RawDefault]] = []
        self.policies: list[tuple[str, catalog.RawPolicy]] = []
        self.databases: dict[str, Database] = {}
        self.read_ok: list[str] = []
        self.unreadable: list[Unreadable] = []
        self.owned: list[tuple[str, str, int, str]] = []
        self.lo_compat = False

    def name(self, oid: int) -> str:
        return "PUBLIC" if oid == 0 else self.infos[oid].name if oid in self.infos else str(oid)

    def path(self, oids: list[int]) -> list[str]:
        return [self.name(o) for o in oids]

    # ---- reading --------------------------------------------------------------------

    def query_oids(self, dbs: list[Database]) -> list[int]:
        """The roles whose ACL entries are read: pg_database_owner's only when it can count.

        It counts in a database whose owner is among the roles (`in_db`). Asking for it
        otherwise would cost every read a scan of the whole catalogs: it is pinned, so
        pg_shdepend does not index the grants made to it (rolecall.pg.acl_scope).
        """
        oids = set(self.role.reachable) | (set(self.login.inherited) if self.login else set())
        if self.owner_role > 0 and any(d.owner in oids for d in dbs):
            oids.add(self.owner_role)
        return sorted(oids)

    async def read(self, conn: Conn, connect: Connect | None) -> None:
        """Two round trips on `conn` (what the query's roles depend on, then the grants), and
        one per other database read."""
        db_rows, owned, lo = await read_all(
            conn, catalog.DATABASES, catalog.owned_read(sorted(self.role.reachable)), catalog.LO_COMPAT
        )
        dbs, admin = catalog.parse_databases(db_rows)
        oids = self.query_oids(dbs)
        self.databases = {d.name: d for d in dbs}
        self.owned = catalog.parse_owned(owned)
        self.lo_compat = bool(lo and lo[0][0])
        shared, *here_rows = await read_all(
            conn, catalog.shared_grants_read(self.version, oids), *catalog.database_reads(oids)
        )
        self.raw += catalog.parse_shared_grants(shared)
        here = next(d for d in dbs if d.current)
        self._add(here.name, catalog.parse_database_rows(*here_rows))
        others = [d for d in dbs if not d.current and self._readable(d, admin, connect is not None)]
        gate = asyncio.Semaphore(_PARALLEL)

        async def one(db: Database) -> None:
            assert connect is not None
            async with gate:
                try:
                    async with connect(db.name) as other:
                        self._add(db.name, await catalog.database_rows(other, oids))
                except psycopg.OperationalError as e:
                    self.unreadable.append(
                        Unreadable(database=db.name, reason=f"cannot connect: {_first_line(e)}")
                    )
                except psycopg.Error as e:
                    self.unreadable.append(
                        Unreadable(database=db.name, reason=f"reading its catalogs failed: {_first_line(e)}")
                    )

        await asyncio.gather(*(one(d) for d in others))

    def _readable(self, db: Database, admin: str, can_connect_others: bool) -> bool:
        reason = ""
        if not db.allow_connections:
            reason = "does not allow connections (datallowconn is false)"
        elif db.template:
            reason = "template database: not read (a session in it makes CREATE DATABASE from it fail)"
        elif not db.can_connect:
            reason = f"the admin login {admin!r} has no CONNECT privilege on it"
        elif not can_connect_others:
            reason = "not read: only the instance's own database was asked for"
        if reason:
            self.unreadable.append(Unreadable(database=db.name, reason=reason))
        return not reason

    def _add(self, db: str, rows: DatabaseRows) -> None:
        self.read_ok.append(db)
        self.raw += [(db, g) for g in rows.grants]
        self.defaults += [(db, d) for d in rows.defaults]
        self.policies += [(db, p) for p in rows.policies]

    # ---- closures per database ------------------------------------------------------

    def in_db(self, oids: set[int] | dict[int, list[int]], db: str) -> set[int]:
        """The roles whose privileges count in `db`: the owner of a database is pg_database_owner there."""
        out = set(oids)
        owner = self.databases[db].owner if db in self.databases else -1
        if owner in out:
            out.add(self.owner_role)
        return out

    def grants_of(self, holders: Callable[[str], set[int]]) -> list[Grant]:
        """Aggregate raw ACL entries held by `holders(database)` into one Grant per privilege."""
        out: dict[tuple[object, ...], Grant] = {}
        for db, raw in self.raw:
            held = holders(db)
            if raw.grantee not in held:
                continue
            g = Grant(
                database=db,
                schema_name=raw.schema_name,
                kind=raw.kind,
                name=raw.name,
                column=raw.column,
                privilege=raw.privilege,
                grantable=raw.grantable,
                holders=[self.name(raw.grantee)],
                owner=self.name(raw.owner) if raw.owner in held else "",
                security_definer=raw.security_definer,
            )
            seen = out.get(g.key())
            if seen is None:
                out[g.key()] = g
            else:
                seen.grantable = seen.grantable or g.grantable
                seen.holders = sorted({*seen.holders, *g.holders})
        return sorted(out.values(), key=Grant.key)

    # ---- the result -----------------------------------------------------------------

    def build(self, role: str, login: str, unsafe_allowed: bool) -> Privileges:
        rc = self.role
        effective = self.grants_of(lambda db: self.in_db(rc.inherited, db))
        set_only = gained_grants(effective, self.grants_of(lambda db: self.in_db(rc.privileged(), db)))
        out = Privileges(
            role=role,
            server_version=self.version,
            login=login,
            memberships=self.memberships(),
            grants=effective,
            set_role_only=set_only,
            default_privileges=self.default_privileges(),
            predefined=self.predefined(),
            attributes=self.attributes(),
            bypass_rls=[self.name(o) for o in rc.reachable if self.infos[o].bypassrls],
            rls=self.rls(effective, rc.inherited),
            databases=self.read_ok,
            unreadable=self.unreadable,
        )
        out.lasting = self.lasting(effective + set_only)
        if any(a.refused for a in out.attributes):
            out.verdict = "refused"
        elif out.lasting:
            out.verdict = "lendable_by_unsafe_allowed" if unsafe_allowed else "refused"
        if self.login is not None:
            self.relative_to_login(out)
        out.notes = self.notes(out)
        return out.sort()

    def memberships(self) -> list[Member]:
        rc, out = self.role, []
        for oid, path in rc.reachable.items():
            if oid == rc.start:
                continue
            access = "inherited" if oid in rc.inherited else "set_role_only" if oid in rc.via_set else None
            out.append(
                Member(
                    role=self.name(oid),
                    path=self.path(rc.inherited.get(oid) or rc.via_set.get(oid) or path),
                    access=access or "membership_only",
                    set_role=oid in rc.settable,
                    admin_option=oid in rc.admin,
                )
            )
        return out

    def predefined(self) -> list[PredefinedEffect]:
        out = []
        for oids, access in [(self.role.inherited, "inherited"), (self.role.via_set, "set_role_only")]:
            for oid, path in oids.items():
                name = self.name(oid)
                if name.startswith("pg_"):
                    out.append(
                        PredefinedEffect.model_validate(
                            {"role": name, "effect": predefined.effect(name), "access": access,
                             "path": self.path(path)}
                        )
                    )  # fmt: skip
        return out

    def attributes(self) -> list[Attribute]:
        out = []
        for oid, path in self.role.reachable.items():
            info = self.infos[oid]
            found = [
                ("SUPERUSER", info.superuser, True),
                ("CREATEROLE", info.createrole, True),
                ("BYPASSRLS", info.bypassrls, True),
                ("REPLICATION", info.replication, True),
                ("LOGIN", info.login, True),
                ("CREATEDB", info.createdb, False),
                ("predefined role", info.name.startswith("pg_"), True),
            ]
            out += [
                Attribute(role=info.name, attribute=attr, path=self.path(path), refused=refused)
                for attr, present, refused in found
                if present
            ]
        return out

    def default_privileges(self) -> list[DefaultPrivilege]:
        out = []
        for db, d in self.defaults:
            common = {
                "database": db,
                "creator": d.creator_name,
                "schema_name": d.schema_name,
                "object_type": _OBJTYPES.get(d.objtype, d.objtype),
                "grantee": d.grantee_name,
                "privilege": d.privilege,
                "grantable": d.grantable,
            }
            if d.grantee in self.in_db(self.role.inherited, db):
                out.append(DefaultPrivilege(direction="receives", **common))
            if d.creator in self.role.settable:
                out.append(DefaultPrivilege(direction="creates", **common))
        return out

    def rls(self, grants: list[Grant], holders: dict[int, list[int]]) -> list[RlsTable]:
        """Tables with row-level security among `grants`, with the policies that apply to `holders`."""
        tables: dict[tuple[str, str, str], RawGrant] = {}
        for db, raw in self.raw:
            if raw.rls and raw.kind in ("table", "column"):
                tables[(db, raw.schema_name, raw.name)] = raw
        privs: dict[tuple[str, str, str], set[str]] = {}
        for g in grants:
            key = (g.database, g.schema_name, g.name)
            if key in tables and g.kind in ("table", "column") and g.privilege in _RLS_PRIVILEGES:
                privs.setdefault(key, set()).add(g.privilege)
        out = []
        for key, found in privs.items():
            raw = tables[key]
            held = self.in_db(holders, key[0])
            out.append(
                RlsTable(
                    database=key[0],
                    schema_name=key[1],
                    name=key[2],
                    privileges=[p for p in _RLS_PRIVILEGES if p in found],
                    forced=raw.forced,
                    bypass="owner" if raw.owner in held and not raw.forced else "",
                    policies=self.applying_policies(key, held),
                )
            )
        return out

    def applying_policies(self, table: tuple[str, str, str], held: set[int]) -> list[str]:
        return sorted(
            p.name
            for db, p in self.policies
            if (db, p.schema_name, p.table) == table and (0 in p.roles or held & set(p.roles))
        )

    def lasting(self, grants: list[Grant]) -> list[str]:
        """What makes the safety check refuse the role unless it is in `unsafe_allowed`."""
        out = []
        for owner, db, count, example in self.owned:
            where = f'in database "{db}"' if db else "shared across the cluster (databases, tablespaces)"
            named = f" ({example}{', ...' if count > 1 else ''})" if example else ""
            out.append(f'role "{owner}" owns {count} object{"s" if count > 1 else ""} {where}{named}')
        grantable = [g for g in grants if g.grantable]
        if grantable:
            g = grantable[0]
            more = f" and {len(grantable) - 1} more" if len(grantable) > 1 else ""
            out.append(
                f'role "{g.holders[0]}" holds {g.privilege} on {g.kind} {_object(g)} WITH GRANT OPTION{more}'
            )
        for e in self.edges:
            if e.admin and e.member in self.role.reachable:
                out.append(f'role "{self.name(e.member)}" holds ADMIN OPTION on role "{self.name(e.role)}"')
        return out

    def relative_to_login(self, out: Privileges) -> None:
        """Keep only what the role adds to the login: the same computation for the login's closure."""
        lc = self.login
        assert lc is not None
        info = self.infos[lc.start]
        if info.superuser:
            before = len(out.grants) + len(out.set_role_only)
            out.grants, out.set_role_only, out.rls = [], [], []
            out.default_privileges = [d for d in out.default_privileges if d.direction == "creates"]
            out.predefined, out.already_held = [], before
            return
        mine = self.grants_of(lambda db: self.in_db(lc.inherited, db))
        pre = {self.name(o) for o in lc.inherited if self.name(o).startswith("pg_")}
        before = len(out.grants) + len(out.set_role_only)
        out.grants = [g for g in gained_grants(mine, out.grants) if not predefined.covered(g, pre)]
        out.set_role_only = [
            g for g in gained_grants(mine, out.set_role_only) if not predefined.covered(g, pre)
        ]
        out.already_held = before - len(out.grants) - len(out.set_role_only)
        out.predefined = [p for p in out.predefined if p.role not in pre]
        has = {(d.database, d.creator, d.schema_name, d.object_type, d.privilege) for d in self._receives(lc)}
        out.default_privileges = [
            d
            for d in out.default_privileges
            if d.direction == "creates"
            or (d.database, d.creator, d.schema_name, d.object_type, d.privilege) not in has
        ]
        for m in out.memberships:
            m.already = any(self.name(o) == m.role for o in lc.inherited)
        added = {(g.database, g.schema_name, g.name) for g in out.grants if g.kind in ("table", "column")}
        out.rls = [
            r
            for r in out.rls
            if (r.database, r.schema_name, r.name) in added
            or set(r.policies) - set(self.applying_policies(r.key(), self.in_db(lc.inherited, r.database)))
            or (r.bypass and not self._owner_in(r, lc))
        ]

    def _receives(self, c: Closure) -> list[DefaultPrivilege]:
        return [
            DefaultPrivilege(
                database=db,
                direction="receives",
                creator=d.creator_name,
                schema_name=d.schema_name,
                object_type=_OBJTYPES.get(d.objtype, d.objtype),
                grantee=d.grantee_name,
                privilege=d.privilege,
            )
            for db, d in self.defaults
            if d.grantee in self.in_db(c.inherited, db)
        ]

    def _owner_in(self, table: RlsTable, c: Closure) -> bool:
        held = self.in_db(c.inherited, table.database)
        return any(
            raw.owner in held
            for db, raw in self.raw
            if (db, raw.schema_name, raw.name) == (table.database, table.schema_name, table.name)
        )

    def notes(self, out: Privileges) -> list[str]:
        notes = []
        needs_set = bool(
            out.set_role_only or out.bypass_rls or any(a.attribute in _SET_ATTRIBUTES for a in out.attributes)
        )
        if needs_set and self.version >= 160000:
            notes.append(NOTE_SET_16)
        elif needs_set:
            notes.append(NOTE_SET_15)
        if self.login is not None:
            info = self.infos[self.login.start]
            if info.superuser:
                notes.append(f'login "{info.name}" is a superuser: it holds every privilege already')
            elif not info.inherit and self.version < 160000:
                notes.append(
                    f'login "{info.name}" is NOINHERIT: on 15 it uses the role\'s privileges '
                    "only after SET ROLE"
                )
        if self.lo_compat:
            notes.append("lo_compat_privileges is on: every login can read and write every large object")
        return notes


def _object(g: Grant) -> str:
    name = f"{g.schema_name}.{g.name}" if g.schema_name and g.kind != "schema" else g.name
    return f"{name}.{g.column}" if g.column else name
